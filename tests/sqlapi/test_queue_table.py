"""The queue table: kept by the generations triggers, whoever writes; what it buys.

``private.generation_queue`` mirrors the pending and processing items (migration
20261202000600_lean_queue.sql), so that the worker's status changes on ``generations`` are
HOT updates and claims read only the queue's small indexes. These tests hold it to that:
after every kind of writer the queue matches the items exactly, the batch status derived
inline in the counters trigger agrees with ``private.derive_batch_status`` for every mix of
counts, the worker's own updates are HOT, and a claim reads the fair index in order among
many users' pending items.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.invariants import counter_mismatches, queue_mismatches

from .conftest import create_batch, ledger_balances

STATUSES = ("pending", "processing", "completed", "failed", "cancelled")


pytestmark = pytest.mark.usefixtures("empty_queue")


def test_every_mix_of_counts_gets_the_status_the_rule_gives(admin: Any, make_user: Any) -> None:
    """0-2 items in each of the five statuses (242 batches), inserted and then moved by
    plain UPDATEs: the counters trigger's inline status is derive_batch_status's."""
    owner = make_user().user_id
    mixes = [m for m in itertools.product(range(3), repeat=5) if any(m)]
    batches = []
    for mix in mixes:
        batch = uuid.uuid4()
        batches.append(batch)
        admin.execute(
            "insert into public.generation_batches (id, user_id, original_image_url)"
            " values (%s, %s, %s)",
            (batch, owner, f"{owner}/{batch}/s.png"),
        )
        statuses = [s for s, n in zip(STATUSES, mix, strict=True) for _ in range(n)]
        admin.execute(
            "insert into public.generations (user_id, batch_id, style_key, position, status,"
            " credit_cost, max_attempts, attempts, lease_owner, lease_expires_at)"
            " select %s, %s, 'noir', p, s::public.generation_status, 0, 3,"
            "        case when s = 'pending' then 0 else 1 end,"
            "        case when s = 'processing' then 'w' end,"
            "        case when s = 'processing' then now() + interval '1 hour' end"
            "   from unnest(%s::text[]) with ordinality as t(s, p)",
            (owner, batch, statuses),
        )
    assert counter_mismatches(admin, [owner]) == []
    assert {
        r["status"]
        for r in admin.execute(
            "select status::text from public.generation_batches where user_id = %s", (owner,)
        )
    } == {"pending", "processing", "partial", "completed", "failed", "cancelled"}
    # Every pending item starts, then every running one finishes: each batch passes
    # through the other mixes on the way.
    admin.execute(
        "update public.generations set status = 'processing', attempts = attempts + 1"
        " where user_id = %s and status = 'pending'",
        (owner,),
    )
    assert counter_mismatches(admin, [owner]) == []
    admin.execute(
        "update public.generations set status = 'completed' where user_id = %s"
        " and status = 'processing' and position %% 2 = 0",
        (owner,),
    )
    admin.execute(
        "update public.generations set status = 'failed' where user_id = %s"
        " and status = 'processing'",
        (owner,),
    )
    assert counter_mismatches(admin, [owner]) == []
    assert queue_mismatches(admin) == []


def test_the_queue_follows_every_writer(admin: Any, make_user: Any, service: Any) -> None:
    """Each contract function that moves items, an operator's UPDATE and a cascade: after
    each, the queue holds exactly the pending and processing items, field for field."""
    user = make_user(credits=100)
    checks: list[str] = []

    def step(name: str, action: Callable[[], Any]) -> Any:
        result = action()
        assert queue_mismatches(admin) == [], f"after {name}"
        checks.append(name)
        return result

    first = step("create", lambda: create_batch(user, ["noir", "pop_art", "poster", "cartoon"]))
    second = step("create again", lambda: create_batch(user, ["noir", "poster"], prompt="b"))
    claimed = step(
        "claim",
        lambda: service.rpc("claim_generations", worker_id="w", max_items=3, lease_seconds=60),
    )
    ids = [c["id"] for c in claimed]
    step(
        "heartbeat",
        lambda: service.rpc(
            "heartbeat_generations", worker_id="w", generation_ids=ids, lease_seconds=120
        ),
    )
    step(
        "complete",
        lambda: service.rpc(
            "complete_generations",
            worker_id="w",
            generation_ids=[ids[0]],
            image_paths=[f"{claimed[0]['user_id']}/{claimed[0]['batch_id']}/{ids[0]}-1.png"],
        ),
    )
    step(
        "fail, retryable",
        lambda: service.rpc("fail_generation", worker_id="w", generation_id=ids[1], error="503"),
    )
    step(
        "fail, permanent",
        lambda: service.rpc(
            "fail_generation", worker_id="w", generation_id=ids[2], error="bad", retryable=False
        ),
    )
    again = step(
        "claim again",
        lambda: service.rpc("claim_generations", worker_id="v", max_items=2, lease_seconds=60),
    )
    step(
        "release",
        lambda: service.rpc("release_generations", worker_id="v", generation_ids=[again[0]["id"]]),
    )
    step(
        "lease runs out (operator)",
        lambda: admin.execute(
            "update public.generations set lease_expires_at = now() - interval '1 second'"
            " where id = %s",
            (again[1]["id"],),
        ),
    )
    step("recover", lambda: service.rpc("recover_expired_leases"))
    step("retry failed", lambda: user.rpc("retry_failed", batch_id=str(claimed[2]["batch_id"])))
    step("cancel", lambda: user.rpc("cancel_batch", batch_id=str(second)))
    step(
        "operator requeues",
        lambda: admin.execute(
            "update public.generations set run_after = now() + interval '1 hour'"
            " where batch_id = %s and status = 'pending'",
            (first,),
        ),
    )
    step("delete", lambda: user.rpc("delete_batch", batch_id=str(first)))
    step(
        "account deleted",
        lambda: admin.execute("delete from auth.users where id = %s", (user.user_id,)),
    )
    assert len(checks) == 16
    assert admin.execute("select count(*) as n from private.generation_queue").fetchone()["n"] == 0
    assert counter_mismatches(admin) == []
    assert ledger_balances(admin) == []


def test_the_worker_status_changes_are_hot_updates(
    admin: Any, make_user: Any, service: Any
) -> None:
    """A claim, a heartbeat and a completion of a new batch's items change no index of
    generations: each is a heap-only tuple update (counted within the transaction)."""
    user = make_user(credits=100)
    create_batch(user, ["noir", "pop_art", "poster", "cartoon"])
    conn = service.conn  # one transaction, rolled back: the counts are this transaction's
    claimed = conn.execute(
        "select id, user_id || '/' || batch_id || '/' || id || '-1.png' as path"
        " from public.claim_generations('w', 4, 60)"
    ).fetchall()
    ids, paths = [r[0] for r in claimed], [r[1] for r in claimed]
    conn.execute("select public.heartbeat_generations('w', %s::uuid[], 90)", (ids,))
    conn.execute("select public.complete_generations('w', %s::uuid[], %s::text[])", (ids, paths))
    updated, hot = conn.execute(
        "select pg_stat_get_xact_tuples_updated('public.generations'::regclass),"
        " pg_stat_get_xact_tuples_hot_updated('public.generations'::regclass)"
    ).fetchone()
    conn.rollback()
    assert updated == 12  # 4 claimed, 4 renewed, 4 completed
    assert hot == updated


def test_a_claim_reads_the_fair_index_in_order(admin: Any) -> None:
    """5,000 pending items of 1,000 users: the claim's candidates come from the queue's
    fair index read in order (no sort of the pending items), as auto_explain shows."""
    users = [uuid.uuid4() for _ in range(1000)]
    admin.execute(
        "insert into auth.users (id, email) select u, u || '@example.test' from unnest(%s::uuid[]) u",
        (users,),
    )
    admin.execute(
        """
        with b as (
          insert into public.generation_batches (id, user_id, original_image_url)
          select gen_random_uuid(), u, u || '/s.png' from unnest(%s::uuid[]) u
          returning id, user_id
        )
        insert into public.generations
          (user_id, batch_id, style_key, position, credit_cost, max_attempts)
        select b.user_id, b.id, 'noir', p, 0, 3 from b cross join generate_series(1, 5) p
        """,
        (users,),
    )
    admin.execute("analyze private.generation_queue")
    notices: list[str] = []

    def collect(diagnostic: Any) -> None:
        notices.append(diagnostic.message_primary or "")

    admin.add_notice_handler(collect)
    try:
        with admin.transaction(force_rollback=True):
            admin.execute("load 'auto_explain'")
            for setting, value in (
                ("log_min_duration", "0"),
                ("log_nested_statements", "on"),
                ("log_level", "notice"),
            ):
                admin.execute(f"set local auto_explain.{setting} = {value}")
            claimed = admin.execute(
                "select * from public.claim_generations('w', 16, 60)"
            ).fetchall()
    finally:
        admin.remove_notice_handler(collect)
    assert len(claimed) == 16
    plan = next(n for n in notices if "generation_queue" in n and "LockRows" in n)
    # The CTE that picks the candidates; the sort of the few claimed rows after it is fine.
    chosen = plan.split("CTE chosen")[1].split("CTE claimed")[0]
    assert "Index Scan using generation_queue_fair_idx" in chosen, plan
    assert "Sort" not in chosen, plan


def test_odd_lists_from_a_worker_change_only_what_they_name(
    admin: Any, make_user: Any, service: Any
) -> None:
    """Heartbeats and completions look each item's attempt and path up by id: a null id,
    a repeated id, an unknown id, a null attempt (no check) and a wrong attempt each do
    what the pairs say and nothing else, without an error."""
    user = make_user(credits=100)
    create_batch(user, ["noir", "pop_art", "poster"])
    a, b, c = service.rpc("claim_generations", worker_id="w", max_items=3, lease_seconds=60)
    unknown = uuid.uuid4()
    renewed = service.rpc(
        "heartbeat_generations",
        worker_id="w",
        generation_ids=[None, a["id"], a["id"], b["id"], c["id"], unknown],
        attempts=[1, 1, 1, None, 2, 1],
        lease_seconds=600,
    )
    assert sorted(map(str, renewed)) == sorted([str(a["id"]), str(b["id"])])

    def path(item: dict[str, Any]) -> str:
        return f"{item['user_id']}/{item['batch_id']}/{item['id']}-1.png"

    accepted = service.rpc(
        "complete_generations",
        worker_id="w",
        generation_ids=[a["id"], b["id"], c["id"], unknown],
        image_paths=[path(a), path(b), path(c), f"{user.user_id}/x.png"],
        attempts=[1, None, 2, 1],
    )
    assert sorted(map(str, accepted)) == sorted([str(a["id"]), str(b["id"])])
    rows = {
        str(r["id"]): (r["status"], r["generated_image_url"])
        for r in admin.execute(
            "select id, status::text, generated_image_url from public.generations"
            " where id = any(%s)",
            ([a["id"], b["id"], c["id"]],),
        )
    }
    assert rows == {
        str(a["id"]): ("completed", path(a)),
        str(b["id"]): ("completed", path(b)),
        str(c["id"]): ("processing", None),
    }
    assert queue_mismatches(admin) == [] and counter_mismatches(admin) == []
