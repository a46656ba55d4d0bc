"""Batch lifecycle through the contract: status derivation, cancel, retry, delete, reads."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from portraitkit import errors

from .conftest import batch_row, ledger_balances

STYLES = ["pencil_sketch", "pop_art", "oil_painting"]  # costs 1, 2, 3


@pytest.fixture
def drain(admin: Any) -> None:
    """Give this test the queue to itself: finish whatever earlier tests left pending."""
    admin.execute(
        "update public.generations set status = 'cancelled' where status in ('pending', 'processing')"
    )


def _new_batch(user: Any, styles: list[str] = STYLES) -> uuid.UUID:
    return user.rpc(
        "create_generation_batch",
        style_keys=styles,
        source_image_path=f"{user.user_id}/sources/s.png",
    )


def _claim_all(service: Any, worker: str = "w") -> list[dict[str, Any]]:
    return service.rpc("claim_generations", worker_id=worker, max_items=100)


def _by_style(rows: list[dict[str, Any]]) -> dict[str, uuid.UUID]:
    return {r["style_key"]: r["id"] for r in rows}


def test_batch_completes_when_every_item_completes(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    claimed = _claim_all(service)
    assert batch_row(admin, batch_id)["status"] == "processing"
    accepted = service.rpc(
        "complete_generations",
        worker_id="w",
        generation_ids=[c["id"] for c in claimed],
        image_paths=[f"{c['user_id']}/p/{c['id']}.png" for c in claimed],
    )
    assert sorted(accepted) == sorted(c["id"] for c in claimed)
    batch = batch_row(admin, batch_id)
    assert batch["status"] == "completed"
    assert (batch["completed_count"], batch["pending_count"], batch["processing_count"]) == (
        3,
        0,
        0,
    )
    assert batch["finished_at"] is not None
    assert batch["cover_image_url"].startswith(f"{user.user_id}/p/")
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 4
    )


def test_some_failed_makes_partial_and_refunds_only_failed(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    ids = _by_style(_claim_all(service))
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=ids["pencil_sketch"],
        image_path=f"{user.user_id}/a.png",
    )
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=ids["pop_art"],
        image_path=f"{user.user_id}/b.png",
    )
    assert (
        service.rpc(
            "fail_generation",
            worker_id="w",
            generation_id=ids["oil_painting"],
            error="model refused",
            retryable=False,
        )
        == "failed"
    )
    batch = batch_row(admin, batch_id)
    assert batch["status"] == "partial"
    assert (batch["completed_count"], batch["failed_count"]) == (2, 1)
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 10 - 6 + 3
    )
    refunds = admin.execute(
        "select generation_id, delta from public.credit_ledger where user_id = %s and kind = 'refund'",
        (user.user_id,),
    ).fetchall()
    assert refunds == [{"generation_id": ids["oil_painting"], "delta": 3}]
    assert ledger_balances(admin) == []


def test_all_failed_makes_failed_and_refunds_everything(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    for gid in _by_style(_claim_all(service)).values():
        service.rpc("fail_generation", worker_id="w", generation_id=gid, error="x", retryable=False)
    assert batch_row(admin, batch_id)["status"] == "failed"
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 10
    )


def test_cancel_refunds_pending_items_and_lets_running_ones_finish(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    running = service.rpc("claim_generations", worker_id="w", max_items=1)[0]  # pencil_sketch
    result = user.rpc("cancel_batch", batch_id=batch_id)
    assert result == {
        "batch_id": str(batch_id),
        "cancelled": 2,
        "refunded": 5,
        "status": "processing",
    }
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 10 - 6 + 5
    )
    assert (
        service.rpc(
            "complete_generation",
            worker_id="w",
            generation_id=running["id"],
            image_path=f"{user.user_id}/r.png",
        )
        is True
    )
    batch = batch_row(admin, batch_id)
    # One item completed and the rest cancelled: the user got a result, so "completed".
    assert (batch["status"], batch["completed_count"], batch["cancelled_count"]) == (
        "completed",
        1,
        2,
    )
    assert ledger_balances(admin) == []


def test_cancel_of_untouched_batch_makes_it_cancelled(admin: Any, make_user: Any) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    user.rpc("cancel_batch", batch_id=batch_id)
    assert batch_row(admin, batch_id)["status"] == "cancelled"
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 10
    )


def test_cancelling_a_finished_batch_is_refused(admin: Any, make_user: Any) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    user.rpc("cancel_batch", batch_id=batch_id)
    before = batch_row(admin, batch_id)
    with pytest.raises(errors.BatchFinished) as caught:
        user.rpc("cancel_batch", batch_id=batch_id)
    assert caught.value.http_status == 409
    assert caught.value.details == {"batch_id": str(batch_id), "status": "cancelled"}
    assert batch_row(admin, batch_id) == before


def test_cancelled_item_result_is_discarded(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    claimed = _claim_all(service)
    user.rpc("delete_batch", batch_id=batch_id)
    assert (
        service.rpc(
            "complete_generation",
            worker_id="w",
            generation_id=claimed[0]["id"],
            image_path=f"{user.user_id}/late.png",
        )
        is False
    )


def test_retry_failed_requeues_and_charges_again(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    ids = _by_style(_claim_all(service))
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=ids["pencil_sketch"],
        image_path=f"{user.user_id}/a.png",
    )
    for key in ("pop_art", "oil_painting"):
        service.rpc(
            "fail_generation", worker_id="w", generation_id=ids[key], error="x", retryable=False
        )
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 9
    )
    result = user.rpc("retry_failed", batch_id=batch_id)
    assert result == {"batch_id": str(batch_id), "retried": 2, "charged": 5, "status": "processing"}
    items = admin.execute(
        "select status, attempts, last_error from public.generations where id = any(%s)",
        ([ids["pop_art"], ids["oil_painting"]],),
    ).fetchall()
    assert items == [{"status": "pending", "attempts": 0, "last_error": None}] * 2
    batch = batch_row(admin, batch_id)
    assert (
        batch["status"],
        batch["failed_count"],
        batch["pending_count"],
        batch["finished_at"],
    ) == ("processing", 0, 2, None)
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 4
    )
    assert ledger_balances(admin) == []


def test_retry_with_nothing_failed_is_refused(make_user: Any) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    with pytest.raises(errors.NothingToRetry):
        user.rpc("retry_failed", batch_id=batch_id)


def test_retry_needs_credits_for_the_failed_items(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=6)
    batch_id = _new_batch(user)
    for gid in _by_style(_claim_all(service)).values():
        service.rpc("fail_generation", worker_id="w", generation_id=gid, error="x", retryable=False)
    admin.execute(
        "update public.profiles set starting_credits = starting_credits - 6,"
        " total_credits = 0 where id = %s",
        (user.user_id,),
    )
    with pytest.raises(errors.InsufficientCredits):
        user.rpc("retry_failed", batch_id=batch_id)
    assert batch_row(admin, batch_id)["status"] == "failed"


def test_delete_removes_batch_and_refunds_unfinished(
    admin: Any, make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    first = service.rpc("claim_generations", worker_id="w", max_items=1)[0]
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=first["id"],
        image_path=f"{user.user_id}/keep.png",
    )
    result = user.rpc("delete_batch", batch_id=batch_id)
    assert result["deleted"] is True and result["refunded"] == 5
    assert result["image_paths"] == [f"{user.user_id}/keep.png"]
    assert (
        admin.execute(
            "select count(*) as n from public.generations where batch_id = %s", (batch_id,)
        ).fetchone()["n"]
        == 0
    )
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 9
    )
    assert ledger_balances(admin) == []
    with pytest.raises(errors.BatchNotFound):
        user.rpc("get_batch", batch_id=batch_id)


@pytest.mark.parametrize("function", ["get_batch", "cancel_batch", "retry_failed", "delete_batch"])
def test_other_users_batch_is_not_found(admin: Any, make_user: Any, function: str) -> None:
    alice, mallory = make_user(credits=10), make_user(credits=10)
    batch_id = _new_batch(alice)
    before = batch_row(admin, batch_id)
    with pytest.raises(errors.BatchNotFound) as caught:
        mallory.rpc(function, batch_id=batch_id)
    assert caught.value.http_status == 404
    assert batch_row(admin, batch_id) == before
    with pytest.raises(errors.BatchNotFound):
        mallory.rpc(function, batch_id=uuid.uuid4())


def test_get_batch_shows_items_with_style_names_and_timings(
    make_user: Any, service: Any, drain: None
) -> None:
    user = make_user(credits=10)
    batch_id = _new_batch(user)
    first = service.rpc("claim_generations", worker_id="w", max_items=1)[0]
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=first["id"],
        image_path=f"{user.user_id}/x.png",
    )
    batch = user.rpc("get_batch", batch_id=batch_id)
    assert [i["style_name"] for i in batch["items"]] == ["Pencil Sketch", "Pop Art", "Oil Painting"]
    done = batch["items"][0]
    assert done["status"] == "completed" and done["generated_image_url"] == f"{user.user_id}/x.png"
    assert done["duration_ms"] is not None and done["duration_ms"] >= 0
    assert (batch["completed_count"], batch["total_count"], batch["progress"]) == (1, 3, 33)
    assert (
        batch["cover_image_url"] == f"{user.user_id}/x.png"
        and batch["cover_style_key"] == "pencil_sketch"
    )


def test_list_batches_pages_newest_first_and_filters(admin: Any, make_user: Any) -> None:
    user, other = make_user(credits=100), make_user(credits=100)
    made = [_new_batch(user, ["poster"]) for _ in range(7)]
    _new_batch(other, ["poster"])
    user.rpc("cancel_batch", batch_id=made[2])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = user.rpc("list_batches", page_size=3, after=cursor)
        seen += [b["id"] for b in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [str(b) for b in reversed(made)]
    cancelled = user.rpc("list_batches", status="cancelled")
    assert [b["id"] for b in cancelled["items"]] == [str(made[2])]
    assert cancelled["next_cursor"] is None


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"after": "garbage"}, "after"),
    ],
)
def test_list_batches_rejects_bad_paging(make_user: Any, args: dict[str, Any], field: str) -> None:
    user = make_user()
    with pytest.raises(errors.InvalidInput) as caught:
        user.rpc("list_batches", **args)
    assert caught.value.details == {"field": field}


def test_stats_summarise_the_users_work(make_user: Any, service: Any, drain: None) -> None:
    user = make_user(credits=20)
    _new_batch(user)
    ids = _by_style(_claim_all(service))
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=ids["pencil_sketch"],
        image_path=f"{user.user_id}/a",
    )
    service.rpc(
        "complete_generation",
        worker_id="w",
        generation_id=ids["pop_art"],
        image_path=f"{user.user_id}/b",
    )
    service.rpc(
        "fail_generation",
        worker_id="w",
        generation_id=ids["oil_painting"],
        error="x",
        retryable=False,
    )
    cancelled = _new_batch(user, ["poster"])
    user.rpc("cancel_batch", batch_id=cancelled)
    stats = user.rpc("batch_stats")
    assert {
        k: stats[k] for k in ("batches", "items", "completed", "failed", "cancelled", "pending")
    } == {"batches": 2, "items": 4, "completed": 2, "failed": 1, "cancelled": 1, "pending": 0}
    assert stats["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["avg_generation_ms"] is not None
    assert (stats["credits_spent"], stats["credits_refunded"], stats["balance"]) == (7, 4, 17)


def test_invalid_status_transition_is_refused(admin: Any, make_user: Any) -> None:
    user = make_user()
    batch_id = _new_batch(user, ["poster"])
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation):
        admin.execute(
            "update public.generations set status = 'completed' where batch_id = %s", (batch_id,)
        )


def test_view_keeps_the_seed_apps_shape(make_user: Any) -> None:
    user = make_user()
    batch_id = _new_batch(user, ["poster", "noir"])
    rows = user.query("select * from public.batch_generations_view")
    assert list(rows[0]) == [
        "batch_id",
        "user_id",
        "original_image_url",
        "batch_status",
        "total_count",
        "completed_count",
        "created_at",
        "updated_at",
        "generations",
    ]
    assert rows[0]["batch_id"] == batch_id
    assert [g["style_key"] for g in rows[0]["generations"]] == ["poster", "noir"]
    assert set(rows[0]["generations"][0]) == {
        "id",
        "style_key",
        "generated_image_url",
        "status",
        "created_at",
    }
