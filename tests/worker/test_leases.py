"""Leases, against the real database: whose result counts, and heartbeats that never deadlock.

A slow item is kept by its heartbeats past many lease lengths while another worker looks
for work; a worker whose lease ran out has its late result discarded, the winner's image
kept; an item lost while still rendering is abandoned at once, and so is one its own
worker claims again after an outage. And the worker's own heartbeats and completions,
naming the same items in different orders, never deadlock (the contract locks items in id
order: migration 20261202000100), nor does a busy worker heartbeating every 50 ms.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    Running,
    assert_completed_once,
    create_batches,
    error_kinds,
    history,
    install_audit,
    make_user,
    run_until,
    settled,
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
    return dict(row)


def one_item(db: psycopg.Connection[Any], db_url: str, storage_root: Path) -> tuple[UUID, UUID]:
    """A new user's batch of one item: the batch's id and the item's."""
    [batch] = create_batches(db_url, storage_root, make_user(db_url), ["poster"])
    row = db.execute("select id from public.generations where batch_id = %s", (batch,)).fetchone()
    assert row is not None
    return batch, row["id"]


# --- 3. the self-deadlock story ---------------------------------------------------------

ROUNDS = 60
ROUND_SIZE = 12


@pytest.fixture
def slow_row_updates(db: psycopg.Connection[Any]) -> Iterator[None]:
    """Each row an UPDATE changes takes a millisecond more (a BEFORE ROW trigger runs with
    the row locked), so two statements' lock taking overlaps instead of lasting a few
    microseconds each: a lock-order cycle then shows in a few rounds, not once in a while."""
    db.execute(
        """
        create function faults.slow_row() returns trigger language plpgsql as $$
        begin
          perform pg_sleep(0.001);
          return new;
        end $$;
        create trigger slow_row before update on public.generations
          for each row execute function faults.slow_row();
        """
    )
    yield
    db.execute("drop trigger slow_row on public.generations; drop function faults.slow_row()")


def test_heartbeats_and_completions_in_any_order_never_deadlock(
    db: Any,
    db_url: str,
    storage_root: Path,
    service: Callable[[], Actor],
    slow_row_updates: None,
) -> None:
    """A worker's two connections: one renews its leases over and over while the other
    records its results, round after round, the same items named in different random
    orders. A writer that locked items in the order it is given would deadlock here."""
    user = make_user(db_url)
    batches = create_batches(
        db_url, storage_root, user, STYLES, ROUNDS * ROUND_SIZE // len(STYLES), prompt="race"
    )
    heartbeat, completer = service(), service()
    # The plan the first release deadlocked with: the completion walks the items in the
    # order given (a nested loop over the arrays), the heartbeat in index order.
    completer.url += " options='-c enable_hashjoin=off -c enable_mergejoin=off'"
    held: list[dict[str, Any]] = []
    while claimed := completer.rpc(
        "claim_generations", worker_id="w", max_items=1000, lease_seconds=600
    ):
        held.extend(claimed)
    db.execute("analyze public.generations")  # the planner knows they are all processing
    rounds = [held[n : n + ROUND_SIZE] for n in range(0, len(held), ROUND_SIZE)]
    current = 0  # the round being completed; the heartbeats cover it and the next one
    errors: list[PortraitkitError] = []

    def renew() -> int:
        rng, calls = random.Random(1), 0
        while current < len(rounds):
            ids = [r["id"] for items in rounds[current : current + 2] for r in items]
            try:
                heartbeat.rpc(
                    "heartbeat_generations",
                    worker_id="w",
                    generation_ids=rng.sample(ids, len(ids)),
                    lease_seconds=600,
                )
            except PortraitkitError as exc:
                errors.append(exc)
            calls += 1
        return calls

    def complete() -> None:
        nonlocal current
        rng = random.Random(2)
        for items in rounds:
            order = rng.sample(items, len(items))
            try:
                completer.rpc(
                    "complete_generations",
                    worker_id="w",
                    generation_ids=[r["id"] for r in order],
                    image_paths=[f"{user}/{r['batch_id']}/{r['id']}-1.png" for r in order],
                )
            except PortraitkitError as exc:
                errors.append(exc)
            current += 1

    with ThreadPoolExecutor(2) as pool:
        heartbeats = pool.submit(renew)
        pool.submit(complete).result(timeout=120)
        assert heartbeats.result(timeout=120) > ROUNDS // 2  # side by side all along
    assert error_kinds(errors) == {}
    counts = db.execute(
        "select status::text, attempts, count(*) as n from public.generations"
        " where batch_id = any(%s) group by 1, 2",
        (batches,),
    ).fetchall()
    assert [tuple(r.values()) for r in counts] == [("completed", 1, ROUNDS * ROUND_SIZE)]


async def test_a_busy_worker_with_fast_heartbeats_completes_every_item_once(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """Concurrency 64, a heartbeat every 50 ms over everything held, results recorded in
    batches as they come: the heartbeats and completions name overlapping items all the
    time, and no call meets a deadlock (or any error).

    Each item takes 0.1 s, so the run lasts at least 2400 / 64 x 0.1 = 3.75 s (75 heartbeat
    periods) however fast the machine: an instant generator let a quick run end after
    fewer heartbeats than the test counts on."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES, 200, prompt="busy")
    async with worker_factory(
        lambda _n: Render(seconds=0.1),
        concurrency=64,
        heartbeat_seconds=0.05,
        poll_seconds=0.05,
        lease_seconds=30,
    ) as worker:
        transport = HandlerTransport(worker.queue.transport)
        worker.queue.transport = transport
        [stats] = await run_until([worker], lambda: settled(db, batches), timeout=120)
    assert transport.counts["heartbeat_generations"] > 20
    assert error_kinds(transport.database_errors) == {}
    assert (stats.completed, stats.discarded, stats.retried) == (2400, 0, 0)
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
        Running() as running,
    ):
        watched = HandlerTransport(other.queue.transport)
        other.queue.transport = watched
        running.start(slow)
        await until(lambda: item_row(db, item)["status"] == "processing", timeout=10, what="claim")
        running.start(other)
        await until(lambda: settled(db, [batch]), timeout=30, what="the item", running=running)
        slow_stats, other_stats = await running.stop()
    # The other worker tried all along (about 35 recoveries and 70 claims in 7 s; fewer on
    # a loaded machine, so the bar is well below).
    assert (
        watched.counts["recover_expired_leases"] > 10 and watched.counts["claim_generations"] > 10
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
    hold = asyncio.Event()
    render_a = Render(hold=hold)

    async def heartbeats_never_arrive(call: Call) -> Any:
        if call.function == "heartbeat_generations":
            raise TRANSIENT_ERRORS["connection_dropped"]()
        return await call.forward()

    async with (
        # One slot, held by the stuck render: A cannot claim the item again itself.
        worker_factory(
            lambda _n: render_a,
            concurrency=1,
            lease_seconds=2,
            heartbeat_seconds=0.3,
            shutdown_grace_seconds=1,
            worker_id="late",
        ) as a,
        worker_factory(noop, recover_every_seconds=0.2, poll_seconds=0.1, worker_id="winner") as b,
        Running() as running,
    ):
        a.queue.transport = HandlerTransport(a.queue.transport, heartbeats_never_arrive)
        running.start(a)
        await until(lambda: render_a.running == 1, timeout=10, what="A", running=running)
        running.start(b)
        await until(
            lambda: item_row(db, item)["status"] == "completed",
            timeout=15,
            what="B to complete the item",
            running=running,
        )
        hold.set()  # A's render ends at last
        await until(
            lambda: a.stats.discarded == 1, timeout=10, what="A's late result", running=running
        )
        stats_a, stats_b = await running.stop()
    assert (stats_a.completed, stats_a.discarded) == (0, 1)
    assert (stats_b.claimed, stats_b.completed) == (1, 1)
    assert history(db, item) == [
        "None>pending #0 ",
        "pending>processing #1 late",
        "processing>pending #1 late",  # the lease ran out
        "pending>processing #2 winner",
        f"processing>completed #2 winner {item}-2.png",
    ]
    assert_completed_once(db, storage_root, [batch], attempts={item: 2})  # only B's image


async def test_an_item_lost_while_rendering_is_abandoned_at_once(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """The heartbeat answers that an item still rendering is no longer held (its lease ran
    out and it was recovered): the worker cancels that render at once, frees its slot and,
    here, claims the item again and completes it on attempt 2."""
    batch, item = one_item(db, db_url, storage_root)
    hold = asyncio.Event()
    render = Render(hold=hold)  # attempt 1 would render forever
    async with (
        worker_factory(
            lambda _n: render,
            concurrency=1,
            heartbeat_seconds=0.2,
            lease_seconds=30,
            shutdown_grace_seconds=1,
        ) as worker,
        Running() as running,
    ):
        running.start(worker)
        await until(lambda: render.running == 1, timeout=10, what="the render", running=running)
        # The lease runs out and the item is recovered, in one transaction, so no heartbeat
        # slips in between.
        with db.transaction():
            db.execute(
                "update public.generations set lease_expires_at = now() - interval '1 second'"
                " where id = %s",
                (item,),
            )
            recovered = db.execute("select public.recover_expired_leases() as r").fetchone()
        assert recovered == {"r": {"requeued": 1, "failed": 0}}
        abandoned_after = await until(
            lambda: render.cancelled == 1, timeout=5, what="the render to stop", running=running
        )
        hold.set()  # the second attempt renders normally
        await until(lambda: settled(db, [batch]), timeout=10, what="attempt 2", running=running)
        [stats] = await running.stop()
    assert abandoned_after < 1.0  # a heartbeat interval, and then some
    assert sum(render.calls.values()) == 2
    assert (stats.claimed, stats.completed, stats.discarded) == (2, 1, 1)
    assert_completed_once(db, storage_root, [batch], attempts={item: 2})


async def test_an_item_its_own_worker_claims_again_is_rendered_once(
    db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """The worker's heartbeats stop getting through (an outage longer than the lease), its
    own recovery puts its item back and its own claim takes it again: attempt 2, same
    worker id. The heartbeat cannot tell (the item is held by this worker again), so the
    claim must: the first attempt, still rendering, is abandoned, and the item completes
    once, on attempt 2, with only attempt 2's image stored."""
    batch, item = one_item(db, db_url, storage_root)
    hold = asyncio.Event()
    render = Render(hold=hold)
    outage = asyncio.Event()
    outage.set()

    async def heartbeats_lost_in_an_outage(call: Call) -> Any:
        if call.function == "heartbeat_generations" and outage.is_set():
            raise TRANSIENT_ERRORS["connection_dropped"]()
        return await call.forward()

    async with (
        worker_factory(
            lambda _n: render,
            concurrency=2,
            lease_seconds=1,
            heartbeat_seconds=0.2,
            recover_every_seconds=0.2,
            poll_seconds=0.05,
            shutdown_grace_seconds=1,
        ) as worker,
        Running() as running,
    ):
        worker.queue.transport = HandlerTransport(
            worker.queue.transport, heartbeats_lost_in_an_outage
        )
        running.start(worker)
        await until(
            lambda: item_row(db, item)["attempts"] == 2,
            timeout=10,
            what="the claim again",
            running=running,
        )
        outage.clear()
        await asyncio.sleep(0.5)  # heartbeats get through again
        hold.set()
        await until(lambda: settled(db, [batch]), timeout=10, what="the item", running=running)
        [stats] = await running.stop()
    assert_completed_once(db, storage_root, [batch], attempts={item: 2})
    assert sum(render.calls.values()) == 2
    assert render.cancelled == 1, "the first attempt went on rendering"
    assert (stats.completed, stats.discarded) == (1, 1)
