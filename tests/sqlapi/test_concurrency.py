"""Races the contract must win: many creates on one balance, many status changes on one batch."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from portraitkit import errors

from .conftest import Actor, batch_row, ledger_balances


def _run_together(count: int, work: Any) -> list[Any]:
    """Run work(i) on `count` threads released at the same instant; return results or errors."""
    barrier = threading.Barrier(count)

    def task(i: int) -> Any:
        barrier.wait()
        try:
            return work(i)
        except Exception as exc:  # collected and asserted on by the caller
            return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(task, range(count)))


def test_concurrent_creates_never_overdraw(admin: Any, db_url: str, make_user: Any) -> None:
    user = make_user(credits=50)
    actors = [Actor(db_url, user.claims, user.user_id) for _ in range(60)]
    try:
        for a in actors:  # connect up front so the calls really overlap
            a.conn.execute("select 1")
            a.conn.rollback()
        results = _run_together(
            60,
            lambda i: actors[i].rpc(
                "create_generation_batch",
                style_keys=["oil_painting"],
                source_image_path=f"{actors[i].user_id}/sources/s.png",
            ),
        )
    finally:
        for a in actors:
            a.close()
    ok = [r for r in results if isinstance(r, uuid.UUID)]
    refused = [r for r in results if isinstance(r, errors.InsufficientCredits)]
    assert len(ok) == 16 and len(refused) == 44, Counter(type(r).__name__ for r in results)
    profile = admin.execute(
        "select total_credits from public.profiles where id = %s", (user.user_id,)
    ).fetchone()
    assert profile["total_credits"] == 2
    assert (
        admin.execute(
            "select count(*) as n from public.generation_batches where user_id = %s",
            (user.user_id,),
        ).fetchone()["n"]
        == 16
    )
    assert ledger_balances(admin) == []


def test_concurrent_creates_with_one_idempotency_key_make_one_batch(
    admin: Any, db_url: str, make_user: Any
) -> None:
    user = make_user(credits=50)
    actors = [Actor(db_url, user.claims, user.user_id) for _ in range(20)]
    try:
        results = _run_together(
            20,
            lambda i: actors[i].rpc(
                "create_generation_batch",
                style_keys=["poster"],
                source_image_path=f"{actors[i].user_id}/sources/s.png",
                idempotency_key="tap-twice",
            ),
        )
    finally:
        for a in actors:
            a.close()
    assert len(set(results)) == 1 and isinstance(results[0], uuid.UUID)
    assert (
        admin.execute(
            "select total_credits from public.profiles where id = %s", (user.user_id,)
        ).fetchone()["total_credits"]
        == 49
    )


def _big_batch(admin: Any, user_id: uuid.UUID, size: int) -> uuid.UUID:
    """A batch larger than the API allows, built directly to stress the trigger."""
    batch_id = admin.execute(
        "insert into public.generation_batches (user_id, original_image_url) values (%s, 's.png')"
        " returning id",
        (user_id,),
    ).fetchone()["id"]
    admin.execute(
        """
        insert into public.generations (user_id, batch_id, style_key, position, credit_cost, max_attempts)
        select %s, %s, 'poster', n, 1, 3 from generate_series(1, %s) n
        """,
        (user_id, batch_id, size),
    )
    return batch_id


def _exact_counts(admin: Any, batch_id: uuid.UUID) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in admin.execute(
            "select status::text, count(*)::int as n from public.generations where batch_id = %s"
            " group by status",
            (batch_id,),
        ).fetchall()
    }


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_status_changes_keep_counters_exact(
    admin: Any, db_url: str, make_user: Any, round_: int
) -> None:
    admin.execute(
        "update public.generations set status = 'cancelled'"
        " where status in ('pending', 'processing')"
    )
    user = make_user(credits=1000)
    size = 120
    batch_id = _big_batch(admin, user.user_id, size)
    threads = 24
    conns = [psycopg.connect(db_url, autocommit=True) for _ in range(threads)]
    worker_ids = [f"w{i}" for i in range(threads)]
    rng = random.Random(round_)
    try:
        # Phase 1: everybody claims at once, a few items each.
        def claim(i: int) -> list[Any]:
            claimed: list[Any] = []
            conns[i].execute("set role service_role")
            while True:
                rows = (
                    conns[i]
                    .execute(
                        "select id from public.claim_generations(%s, %s)",
                        (worker_ids[i], rng.randint(1, 3)),
                    )
                    .fetchall()
                )
                if not rows:
                    conns[i].execute("reset role")
                    return claimed
                claimed += [r[0] for r in rows]

        claimed = _run_together(threads, claim)
        assert sum(len(c) for c in claimed) == size
        assert len({g for c in claimed for g in c}) == size  # nobody got an item twice
        mid = batch_row(admin, batch_id)
        assert (mid["processing_count"], mid["pending_count"], mid["status"]) == (
            size,
            0,
            "processing",
        )

        # Phase 2: everybody finishes its items one by one, each in its own transaction.
        def finish(i: int) -> None:
            conns[i].execute("set role service_role")
            for gid in claimed[i]:
                if rng.random() < 0.25:
                    conns[i].execute(
                        "select public.fail_generation(%s, %s, 'boom', false)", (worker_ids[i], gid)
                    )
                else:
                    conns[i].execute(
                        "select public.complete_generation(%s, g.id, g.user_id || '/x.png')"
                        " from public.generations g where g.id = %s",
                        (worker_ids[i], gid),
                    )
            conns[i].execute("reset role")

        failures = [r for r in _run_together(threads, finish) if r is not None]
        assert failures == []
    finally:
        for c in conns:
            c.close()
    actual = _exact_counts(admin, batch_id)
    batch = batch_row(admin, batch_id)
    assert batch["total_count"] == size
    assert batch["completed_count"] == actual.get("completed", 0)
    assert batch["failed_count"] == actual.get("failed", 0)
    assert (batch["pending_count"], batch["processing_count"], batch["cancelled_count"]) == (
        0,
        0,
        0,
    )
    expected_status = (
        "partial"
        if actual.get("failed") and actual.get("completed")
        else ("failed" if actual.get("failed") else "completed")
    )
    assert batch["status"] == expected_status
    assert ledger_balances(admin) == []


def test_cancel_racing_claims_and_completions_stays_exact(
    admin: Any, db_url: str, make_user: Any
) -> None:
    admin.execute(
        "update public.generations set status = 'cancelled'"
        " where status in ('pending', 'processing')"
    )
    user = make_user(credits=1000)
    batch_id = _big_batch(admin, user.user_id, 150)
    threads = 12
    conns = [psycopg.connect(db_url, autocommit=True) for _ in range(threads)]
    try:

        def work(i: int) -> None:
            if i == 0:
                Actor(db_url, user.claims, user.user_id).rpc("cancel_batch", batch_id=batch_id)
                return
            conns[i].execute("set role service_role")
            for _ in range(10):
                rows = (
                    conns[i]
                    .execute("select id from public.claim_generations(%s, 2)", (f"w{i}",))
                    .fetchall()
                )
                for (gid,) in rows:
                    conns[i].execute(
                        "select public.complete_generation(%s, g.id, g.user_id || '/x')"
                        " from public.generations g where g.id = %s",
                        (f"w{i}", gid),
                    )

        assert [r for r in _run_together(threads, work) if r is not None] == []
    finally:
        for c in conns:
            c.close()
    actual = _exact_counts(admin, batch_id)
    batch = batch_row(admin, batch_id)
    for status in ("pending", "processing", "completed", "failed", "cancelled"):
        assert batch[f"{status}_count"] == actual.get(status, 0), status
    assert ledger_balances(admin) == []
