"""Leases, against the real database: whose result counts, and heartbeats that never deadlock.

A slow item is kept by its heartbeats past many lease lengths while another worker looks
for work; a worker whose lease ran out has its late result discarded, the winner's image
kept; an item lost while still rendering is abandoned at once. And the worker's own
heartbeats and completions, naming the same items in different orders, never deadlock
(the contract locks items in id order: migration 20261202000100).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from portraitkit.errors import PortraitkitError
from portraitkit.generators import get_generator
from tests.sqlapi.conftest import Actor

from .faults import (
    TRANSIENT_ERRORS,
    Call,
    HandlerTransport,
    Render,
    assert_completed_once,
    create_batches,
    history,
    install_audit,
    make_user,
    result_files,
    run_until,
    settled,
    transient_error_kinds,
    until,
)

pytestmark = pytest.mark.anyio

STYLES = [
    "pencil_sketch",
    "charcoal",
    "ink_wash",
    "watercolor",
    "oil_painting",
    "impressionist",
    "pop_art",
    "comic_halftone",
    "poster",
    "pixel_art",
    "neon_glow",
    "cartoon",
]


@pytest.fixture(scope="module")
def instrumented(db_url: str) -> None:
    """This module's database records every status change and reports a deadlock after
    10 ms (not a second), so a lock cycle shows as 40P01 at once."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        install_audit(conn)
        conn.execute(
            sql.SQL("alter database {} set deadlock_timeout = '10ms'").format(
                sql.Identifier(conn.info.dbname)
            )
        )


@pytest.fixture
def db(admin: psycopg.Connection[Any], instrumented: None) -> psycopg.Connection[Any]:
    return admin


@pytest.fixture
def storage_root(state_dir: Path) -> Path:
    return state_dir / "storage"


@pytest.fixture
def service(db_url: str, instrumented: None) -> Iterator[Callable[[], Actor]]:
    """Connections calling the contract as the service role, as a worker's would."""
    actors: list[Actor] = []

    def connect() -> Actor:
        actors.append(Actor(db_url, {"role": "service_role"}))
        return actors[-1]

    yield connect
    for actor in actors:
        actor.close()


def noop(_name: str) -> Any:
    return get_generator("noop")


def item_row(db: psycopg.Connection[Any], item: UUID) -> dict[str, Any]:
    row = db.execute(
        "select status::text as status, attempts, lease_owner, generated_image_url as image,"
        " user_id, batch_id from public.generations where id = %s",
        (item,),
    ).fetchone()
    assert row is not None
    return row


def one_item(db: psycopg.Connection[Any], db_url: str, storage_root: Path) -> tuple[UUID, UUID]:
    """A new user's batch of one item: the batch's id and the item's."""
    [batch] = create_batches(db_url, storage_root, make_user(db_url), ["poster"])
    row = db.execute("select id from public.generations where batch_id = %s", (batch,)).fetchone()
    assert row is not None
    return batch, row["id"]


# --- 3. the self-deadlock story ---------------------------------------------------------

ROUNDS = 200


def test_heartbeats_and_completions_in_any_order_never_deadlock(
    db: Any, db_url: str, storage_root: Path, service: Callable[[], Actor]
) -> None:
    """One connection renews a worker's leases while another records its results, for the
    same items named in different random orders, both starting at the same instant; many
    rounds. Locking items in the order given would deadlock here within a few rounds."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES, ROUNDS, prompt="race")
    heartbeat, completer, claimer = service(), service(), service()
    rounds: list[list[UUID]] = [[] for _ in batches]
    index = {b: n for n, b in enumerate(batches)}
    while len(
        held := claimer.rpc("claim_generations", worker_id="w", max_items=1000, lease_seconds=600)
    ):
        for row in held:
            rounds[index[row["batch_id"]]].append(row["id"])
    rng = random.Random(9)
    start = threading.Barrier(2, timeout=30)
    errors: list[PortraitkitError] = []

    def renew() -> None:
        for n, ids in enumerate(rounds):
            # What the worker holds: this round's items and the next round's.
            held = ids + (rounds[n + 1] if n + 1 < len(rounds) else [])
            order = rng.sample(held, len(held))
            start.wait()
            try:
                heartbeat.rpc(
                    "heartbeat_generations", worker_id="w", generation_ids=order, lease_seconds=600
                )
            except PortraitkitError as exc:
                errors.append(exc)

    def complete() -> None:
        for ids in rounds:
            order = list(reversed(ids)) if rng.random() < 0.5 else rng.sample(ids, len(ids))
            paths = [f"{user}/{batches[rounds.index(ids)]}/{i}-1.png" for i in order]
            start.wait()
            try:
                completer.rpc(
                    "complete_generations", worker_id="w", generation_ids=order, image_paths=paths
                )
            except PortraitkitError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=renew), threading.Thread(target=complete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert transient_error_kinds(errors) == {}
    counts = db.execute(
        "select status::text, attempts, count(*) as n from public.generations"
        " where batch_id = any(%s) group by 1, 2",
        (batches,),
    ).fetchall()
    assert [tuple(r.values()) for r in counts] == [("completed", 1, ROUNDS * len(STYLES))]


async def test_a_busy_worker_with_fast_heartbeats_completes_every_item_once(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """Concurrency 64, a heartbeat every 50 ms over everything held, results recorded in
    batches as they come: the heartbeats and completions name overlapping items all the
    time, and no call meets a deadlock (or any error)."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES, 250, prompt="busy")
    async with worker_factory(
        noop, concurrency=64, heartbeat_seconds=0.05, poll_seconds=0.05, lease_seconds=30
    ) as worker:
        transport = HandlerTransport(worker.queue.transport)
        worker.queue.transport = transport
        [stats] = await run_until([worker], lambda: settled(db, batches), timeout=120)
    assert transport.counts["heartbeat_generations"] > 20
    assert transient_error_kinds(transport.database_errors) == {}
    assert (stats.completed, stats.discarded, stats.retried) == (3000, 0, 0)
    assert_completed_once(db, storage_root, batches)


# --- 4. leases ----------------------------------------------------------------------


async def test_heartbeats_keep_a_slow_item_past_many_lease_lengths(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """A 7 s item on a 2 s lease, renewed every 0.3 s, while another worker recovers
    expired leases and looks for work every 0.1-0.2 s: it never gets the item, which
    completes once, on its first attempt, by the worker that claimed it."""
    batch, item = one_item(db, db_url, storage_root)
    async with (
        worker_factory(
            lambda _n: Render(seconds=7), lease_seconds=2, heartbeat_seconds=0.3, worker_id="slow"
        ) as slow,
        worker_factory(
            noop, recover_every_seconds=0.2, poll_seconds=0.1, worker_id="other"
        ) as other,
    ):
        watched = HandlerTransport(other.queue.transport)
        other.queue.transport = watched
        run_slow = asyncio.create_task(slow.run())
        await until(lambda: item_row(db, item)["status"] == "processing", timeout=10, what="claim")
        [other_stats] = await run_until([other], lambda: settled(db, [batch]), timeout=30)
        slow.stop()
        slow_stats = await asyncio.wait_for(run_slow, 10)
    assert (
        watched.counts["recover_expired_leases"] > 20 and watched.counts["claim_generations"] > 20
    )
    assert watched.claimed_ids() == [] and other_stats.claimed == 0
    assert (slow_stats.completed, slow_stats.discarded) == (1, 0)
    assert history(db, item) == [
        "None>pending #0 ",
        "pending>processing #1 slow",
        f"processing>completed #1 slow {item}-1.png",
    ]
    assert_completed_once(db, storage_root, [batch])


async def test_a_late_result_after_a_lost_lease_is_discarded(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """Worker A's heartbeats stop getting through, so its lease runs out; recovery puts the
    item back and worker B claims and completes it. When A's render finally ends, its
    result is refused and its image removed; B's image stays, and the item completed once."""
    batch, item = one_item(db, db_url, storage_root)
    render_a = Render(hold=asyncio.Event())

    async def heartbeats_never_arrive(call: Call) -> Any:
        if call.function == "heartbeat_generations":
            raise TRANSIENT_ERRORS["connection_dropped"]()
        return await call.forward()

    async with (
        worker_factory(
            lambda _n: render_a, lease_seconds=2, heartbeat_seconds=0.3, worker_id="late"
        ) as a,
        worker_factory(noop, recover_every_seconds=0.2, poll_seconds=0.1, worker_id="winner") as b,
    ):
        a.queue.transport = HandlerTransport(a.queue.transport, heartbeats_never_arrive)
        runs = [asyncio.create_task(a.run())]
        await until(lambda: render_a.running == 1, timeout=10, what="A to start", runs=runs)
        runs.append(asyncio.create_task(b.run()))
        await until(
            lambda: item_row(db, item)["status"] == "completed", timeout=15, what="B", runs=runs
        )
        render_a.hold.set()  # type: ignore[union-attr]
        await until(lambda: a.stats.discarded == 1, timeout=10, what="A's late result", runs=runs)
        a.stop()
        b.stop()
        stats_a, stats_b = await asyncio.wait_for(asyncio.gather(*runs), 30)
    assert (stats_a.completed, stats_a.discarded) == (0, 1)
    assert (stats_b.claimed, stats_b.completed) == (1, 1)
    assert history(db, item) == [
        "None>pending #0 ",
        "pending>processing #1 late",
        "processing>pending #1 late",  # the lease ran out
        "pending>processing #2 winner",
        f"processing>completed #2 winner {item}-2.png",
    ]
    row = item_row(db, item)
    assert result_files(storage_root, row["user_id"], batch) == {f"{row['image']}"}
    assert_completed_once(db, storage_root, [batch], attempts={item: 2})


async def test_an_item_lost_while_rendering_is_abandoned_at_once(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """The heartbeat answers that an item still rendering is no longer held (its lease ran
    out and it was recovered): the worker cancels that render at once, frees its slot and,
    here, claims the item again and completes it on attempt 2."""
    batch, item = one_item(db, db_url, storage_root)
    render = Render(hold=asyncio.Event())  # attempt 1 would render forever
    async with worker_factory(
        lambda _n: render, concurrency=1, heartbeat_seconds=0.2, lease_seconds=30
    ) as worker:
        run = asyncio.create_task(worker.run())
        await until(lambda: render.running == 1, timeout=10, what="the render", runs=[run])
        # The lease runs out and the item is recovered, in one transaction, so no heartbeat
        # slips in between.
        with db.transaction():
            db.execute(
                "update public.generations set lease_expires_at = now() - interval '1 second'"
                " where id = %s",
                (item,),
            )
            assert db.execute("select public.recover_expired_leases() as r").fetchone()["r"] == {
                "requeued": 1,
                "failed": 0,
            }
        abandoned_after = await until(
            lambda: render.cancelled == 1, timeout=5, what="the render to be cancelled", runs=[run]
        )
        assert render.hold is not None
        render.hold.set()  # the second attempt renders normally
        await until(lambda: settled(db, [batch]), timeout=10, what="attempt 2", runs=[run])
        worker.stop()
        stats = await asyncio.wait_for(run, 10)
    assert abandoned_after < 1.0  # one heartbeat interval, and then some
    assert sum(render.calls.values()) == 2
    assert (stats.claimed, stats.completed, stats.discarded) == (2, 1, 1)
    assert_completed_once(db, storage_root, [batch], attempts={item: 2})
