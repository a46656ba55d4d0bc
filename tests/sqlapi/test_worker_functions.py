"""The worker's functions: leases, heartbeats, retries with backoff, recovery, fairness."""

from __future__ import annotations

from typing import Any

import pytest

from portraitkit import errors

from .conftest import batch_row, create_batch, ledger_balances

pytestmark = pytest.mark.usefixtures("empty_queue")


def test_claim_leases_oldest_first_with_prompt_and_source(make_user: Any, service: Any) -> None:
    user = make_user(credits=20)
    first = create_batch(user, ["pencil_sketch", "pop_art"])
    second = create_batch(user, ["noir"])
    claimed = service.rpc("claim_generations", worker_id="w1", max_items=2, lease_seconds=60)
    assert [c["batch_id"] for c in claimed] == [first, first]
    assert [c["style_key"] for c in claimed] == ["pencil_sketch", "pop_art"]
    assert claimed[0]["attempts"] == 1 and claimed[0]["max_attempts"] == 3
    assert claimed[0]["source_image_path"] == f"{user.user_id}/s.png"
    assert claimed[0]["prompt"].startswith("a detailed graphite pencil sketch portrait")
    assert claimed[0]["generator"] == "local"
    rest = service.rpc("claim_generations", worker_id="w2", max_items=10)
    assert [c["batch_id"] for c in rest] == [second]
    assert service.rpc("claim_generations", worker_id="w3", max_items=10) == []


def test_only_the_lease_holder_can_finish(make_user: Any, service: Any) -> None:
    user = make_user()
    create_batch(user, ["poster"])
    item = service.rpc("claim_generations", worker_id="w1")[0]
    assert (
        service.rpc(
            "complete_generation",
            worker_id="w2",
            generation_id=item["id"],
            image_path=f"{user.user_id}/x",
        )
        is False
    )
    assert (
        service.rpc("fail_generation", worker_id="w2", generation_id=item["id"], error="x") is None
    )
    assert service.rpc("heartbeat_generations", worker_id="w2", generation_ids=[item["id"]]) == []
    assert service.rpc("heartbeat_generations", worker_id="w1", generation_ids=[item["id"]]) == [
        item["id"]
    ]
    assert (
        service.rpc(
            "complete_generation",
            worker_id="w1",
            generation_id=item["id"],
            image_path=f"{user.user_id}/x",
        )
        is True
    )
    assert (
        service.rpc(
            "complete_generation",
            worker_id="w1",
            generation_id=item["id"],
            image_path=f"{user.user_id}/y",
        )
        is False
    )


def test_heartbeat_extends_the_lease(admin: Any, make_user: Any, service: Any) -> None:
    user = make_user()
    create_batch(user, ["poster"])
    item = service.rpc("claim_generations", worker_id="w1", lease_seconds=5)[0]
    service.rpc(
        "heartbeat_generations", worker_id="w1", generation_ids=[item["id"]], lease_seconds=600
    )
    lease = admin.execute(
        "select lease_expires_at - now() > interval '500 seconds' as long from public.generations where id = %s",
        (item["id"],),
    ).fetchone()
    assert lease["long"] is True


def test_retryable_failure_backs_off_then_fails_for_good_and_refunds(
    admin: Any, make_user: Any, service: Any
) -> None:
    user = make_user(credits=10)
    batch_id = create_batch(user, ["oil_painting"])
    delays = []
    for attempt in (1, 2):
        item = service.rpc("claim_generations", worker_id="w")[0]
        assert item["attempts"] == attempt
        assert (
            service.rpc("fail_generation", worker_id="w", generation_id=item["id"], error="503")
            == "pending"
        )
        row = admin.execute(
            "select extract(epoch from run_after - now()) as delay, last_error from public.generations"
            " where id = %s",
            (item["id"],),
        ).fetchone()
        delays.append(float(row["delay"]))
        assert row["last_error"] == "503"
        assert service.rpc("claim_generations", worker_id="w") == []  # not before its backoff
        admin.execute(
            "update public.generations set run_after = now() where id = %s", (item["id"],)
        )
    # base 5 s doubling, with jitter in [50 %, 100 %]
    assert 2.4 <= delays[0] <= 5.1 and 4.9 <= delays[1] <= 10.1
    item = service.rpc("claim_generations", worker_id="w")[0]
    assert item["attempts"] == 3
    assert (
        service.rpc("fail_generation", worker_id="w", generation_id=item["id"], error="503")
        == "failed"
    )
    assert batch_row(admin, batch_id)["status"] == "failed"
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 10
    )
    assert (
        admin.execute(
            "select count(*) as n from public.credit_ledger where generation_id = %s", (item["id"],)
        ).fetchone()["n"]
        == 1
    )
    assert ledger_balances(admin) == []


def test_expired_lease_is_recovered_and_counts_as_an_attempt(
    admin: Any, make_user: Any, service: Any
) -> None:
    user = make_user(credits=10)
    batch_id = create_batch(user, ["poster", "noir"])
    claimed = service.rpc("claim_generations", worker_id="dead", max_items=2)
    admin.execute(
        "update public.generations set lease_expires_at = now() - interval '1 second'"
        " where id = %s",
        (claimed[0]["id"],),
    )
    admin.execute(
        "update public.generations set attempts = max_attempts, lease_expires_at = now()"
        " - interval '1 second' where id = %s",
        (claimed[1]["id"],),
    )
    assert service.rpc("recover_expired_leases") == {"requeued": 1, "failed": 1}
    assert service.rpc("recover_expired_leases") == {"requeued": 0, "failed": 0}
    again = service.rpc("claim_generations", worker_id="alive")
    assert [a["id"] for a in again] == [claimed[0]["id"]]
    assert again[0]["attempts"] == 2
    # the dead worker's late result is discarded
    assert (
        service.rpc(
            "complete_generation",
            worker_id="dead",
            generation_id=claimed[0]["id"],
            image_path=f"{claimed[0]['user_id']}/late",
        )
        is False
    )
    assert (
        service.rpc(
            "complete_generation",
            worker_id="alive",
            generation_id=claimed[0]["id"],
            image_path=f"{claimed[0]['user_id']}/ok",
        )
        is True
    )
    batch = batch_row(admin, batch_id)
    assert (batch["status"], batch["completed_count"], batch["failed_count"]) == ("partial", 1, 1)
    assert ledger_balances(admin) == []


def test_release_returns_items_without_spending_an_attempt(
    admin: Any, make_user: Any, service: Any
) -> None:
    user = make_user()
    batch_id = create_batch(user, ["poster"])
    item = service.rpc("claim_generations", worker_id="w")[0]
    assert service.rpc("release_generations", worker_id="w", generation_ids=[item["id"]]) == 1
    assert batch_row(admin, batch_id)["status"] == "pending"
    again = service.rpc("claim_generations", worker_id="w2")[0]
    assert again["id"] == item["id"] and again["attempts"] == 1


def _backlog(admin: Any, user: Any, batches: int, styles: list[str]) -> None:
    """``batches`` older batches of ``user``, made quickly (as the contract would)."""
    for _ in range(batches):
        create_batch(user, styles)
    admin.execute(
        "update public.generations set queued_at = queued_at - interval '1 hour'"
        " where user_id = %s",
        (user.user_id,),
    )


def test_a_backlog_does_not_hold_up_another_users_new_batch(
    admin: Any, make_user: Any, service: Any
) -> None:
    """The first release only looked at the oldest max_items*4 items: a user with a large
    older backlog at the per-user cap made every claim come back empty."""
    big, small = make_user(credits=10_000), make_user(credits=10)
    _backlog(admin, big, 100, ["pencil_sketch", "charcoal", "poster", "pixel_art", "noir"])
    small_batch = create_batch(small, ["poster"])
    claimed = service.rpc("claim_generations", worker_id="w", max_items=4)
    assert len(claimed) == 4
    assert str(small_batch) in {str(c["batch_id"]) for c in claimed}


def test_users_take_turns_one_item_each(admin: Any, make_user: Any, service: Any) -> None:
    users = [make_user(credits=100) for _ in range(3)]
    _backlog(admin, users[0], 4, ["pencil_sketch", "charcoal", "poster", "noir"])
    for u in users[1:]:
        create_batch(u, ["pencil_sketch", "charcoal", "poster"])
    claimed = service.rpc("claim_generations", worker_id="w", max_items=9)
    owners = [str(c["user_id"]) for c in claimed]
    assert sorted(owners.count(str(u.user_id)) for u in users) == [3, 3, 3]


def test_a_user_alone_gets_every_free_slot(make_user: Any, service: Any) -> None:
    user = make_user(credits=100)
    create_batch(
        user, ["pencil_sketch", "charcoal", "poster", "pixel_art", "noir", "vintage_photo"]
    )
    first = service.rpc("claim_generations", worker_id="w", max_items=4, max_running_per_user=2)
    assert len(first) == 4  # the first release's cap is ignored: it idled free slots
    assert len(service.rpc("claim_generations", worker_id="w", max_items=4)) == 2


def test_a_user_coming_back_joins_the_current_round(
    admin: Any, make_user: Any, service: Any
) -> None:
    """A new batch starts at the queue's present round, not behind everyone's backlog."""
    big, late = make_user(credits=10_000), make_user(credits=10)
    _backlog(admin, big, 20, ["pencil_sketch", "charcoal", "poster", "pixel_art", "noir"])
    service.rpc("claim_generations", worker_id="w", max_items=30)  # the queue moves on
    late_batch = create_batch(late, ["poster", "noir"])
    claimed = service.rpc("claim_generations", worker_id="w", max_items=4)
    assert [str(c["batch_id"]) for c in claimed].count(str(late_batch)) == 2


def test_complete_many_in_one_call(admin: Any, make_user: Any, service: Any) -> None:
    users = [make_user(credits=10) for _ in range(3)]
    batches = [create_batch(u, ["poster", "noir"]) for u in users]
    claimed = service.rpc("claim_generations", worker_id="w", max_items=10)
    assert len(claimed) == 6
    accepted = service.rpc(
        "complete_generations",
        worker_id="w",
        generation_ids=[c["id"] for c in claimed],
        image_paths=[f"{c['user_id']}/{c['id']}.png" for c in claimed],
    )
    assert len(accepted) == 6
    assert {batch_row(admin, b)["status"] for b in batches} == {"completed"}


@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("claim_generations", {"worker_id": "", "max_items": 1}),
        ("claim_generations", {"worker_id": "w", "max_items": 0}),
        ("claim_generations", {"worker_id": "w", "max_items": 1, "lease_seconds": 0}),
        ("complete_generations", {"worker_id": "w", "generation_ids": [], "image_paths": ["x"]}),
        ("grant_credits", {"user_id": "00000000-0000-0000-0000-000000000000", "amount": 0}),
    ],
)
def test_worker_functions_reject_bad_input(
    service: Any, function: str, args: dict[str, Any]
) -> None:
    with pytest.raises(errors.InvalidInput):
        service.rpc(function, **args)


def test_grant_credits_is_recorded_in_the_ledger(admin: Any, make_user: Any, service: Any) -> None:
    user = make_user(credits=1)
    assert service.rpc("grant_credits", user_id=user.user_id, amount=25, note="support") == 26
    assert admin.execute(
        "select kind, delta, note from public.credit_ledger where user_id = %s", (user.user_id,)
    ).fetchall() == [{"kind": "grant", "delta": 25, "note": "support"}]
    assert user.rpc("batch_stats")["credits_granted"] == 25
    assert ledger_balances(admin) == []
    with pytest.raises(errors.ProfileNotFound):
        service.rpc("grant_credits", user_id="00000000-0000-0000-0000-000000000000", amount=1)
