"""The worker under injected faults, against the real database.

Every worker call (claim, heartbeat, complete, fail, release, recover) is made to fail with
each transient error class, injected two ways: by the transport (before the call reaches
the database, or after it committed, so only the answer is lost) and by a trigger in the
database that raises the real SQLSTATE or ends the session. Whatever happens, every item
ends completed exactly once, with the attempts the story explains, its one result stored,
counters and ledgers exact, nothing left running, and the worker still running until told
to stop. A refusal that retrying cannot fix stops the worker loudly instead. A soak throws
random faults and racing users at two workers at once.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from portraitkit.errors import (
    BatchFinished,
    BatchNotFound,
    InsufficientCredits,
    NotAllowed,
    NothingToRetry,
    PermanentGenerationError,
    RetryableGenerationError,
    WorkerFailed,
)
from portraitkit.generators import GeneratedImage, GenerationRequest, get_generator
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.queue import WorkQueue
from portraitkit.worker import Worker, WorkerStats
from tests.invariants import counter_mismatches, queue_mismatches
from tests.sqlapi.conftest import ledger_balances

from .faults import (
    DATABASE_ERRORS,
    TRANSIENT_ERRORS,
    WORKER_CALLS,
    Call,
    Fault,
    HandlerTransport,
    RandomFaults,
    Render,
    Running,
    ScriptedFaults,
    assert_completed_once,
    audited_batches,
    completions,
    create_batches,
    database_calls,
    every_other_call,
    every_other_database_call,
    install_audit,
    install_database_faults,
    make_user,
    plan_database_faults,
    reset_database_faults,
    result_files,
    run_until,
    settled,
    unfinished,
    until,
)

pytestmark = pytest.mark.anyio

STYLES = ["poster", "noir", "pixel_art", "charcoal", "vintage_photo", "pencil_sketch"]
INJECTIONS = ["transport", "transport-after-commit", "database"]


@pytest.fixture(scope="module")
def instrumented(db_url: str) -> None:
    """This module's database records every status change and can raise faults."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        install_audit(conn)
        install_database_faults(conn)


@pytest.fixture
def db(admin: psycopg.Connection[Any], instrumented: None) -> Iterator[psycopg.Connection[Any]]:
    """The superuser connection, with no database fault planned before or after the test."""
    reset_database_faults(admin)
    yield admin
    reset_database_faults(admin)


@pytest.fixture
def storage_root(state_dir: Path) -> Path:
    return state_dir / "storage"  # where the workers' LocalStorage keeps the bucket


@pytest.fixture
def retry_base(admin: psycopg.Connection[Any]) -> Iterator[Callable[[int], None]]:
    """Set the contract's first retry delay (seconds); restored after the test."""

    def set_base(seconds: int) -> None:
        admin.execute(
            "update private.settings set value = to_jsonb(%s::int) where key = 'retry_base_seconds'",
            (seconds,),
        )

    yield set_base
    set_base(5)


class Armed:
    """Faults armed on one worker function: calls 1, 3, 5, ... fail, one error class each."""

    def __init__(
        self, injection: str, function: str, worker: Worker, db: psycopg.Connection[Any]
    ) -> None:
        self.function = function
        self.db = db
        self.scripted: ScriptedFaults | None = None
        if injection == "database":
            self.plan = every_other_database_call(DATABASE_ERRORS)
            plan_database_faults(db, function, self.plan)
        else:
            self.scripted = ScriptedFaults(
                {
                    function: every_other_call(
                        TRANSIENT_ERRORS, after_commit=injection == "transport-after-commit"
                    )
                }
            )
            worker.queue.transport = HandlerTransport(worker.queue.transport, self.scripted)

    def struck(self) -> bool:
        """Every planned fault has struck (and, in the database, the call after the last)."""
        if self.scripted is not None:
            return not self.scripted.pending()
        return database_calls(self.db, self.function) > max(self.plan)

    def lost_claims(self) -> Counter[UUID]:
        """How many times each item was in a claim whose answer was lost."""
        lost: Counter[UUID] = Counter()
        for record in self.scripted.injected if self.scripted else []:
            lost.update(UUID(str(row["id"])) for row in record.lost_answer or [])
        return lost


def noop(_name: str) -> Any:
    return get_generator("noop")


def until_every_fault_struck(
    armed: Armed,
    db: psycopg.Connection[Any],
    batches: list[UUID],
    more: Callable[[], list[UUID]],
) -> Callable[[], bool]:
    """True once the batches are done and every planned fault has struck. A call that
    runs only while there is work (a heartbeat, a completion) may be made too few times
    for the plan when the machine is fast or slow (retries fold work into fewer calls):
    then ``more`` work comes, until every fault has struck."""

    def done() -> bool:
        if not settled(db, batches):
            return False
        if armed.struck():
            return True
        batches.extend(more())
        return False

    return done


def items_of(db: psycopg.Connection[Any], batch_ids: list[UUID]) -> list[dict[str, Any]]:
    return db.execute(
        "select id, status::text as status, attempts, lease_owner from public.generations"
        " where batch_id = any(%s) order by id",
        (batch_ids,),
    ).fetchall()


# --- 1. transient errors in every worker call are survived ------------------------------


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_claims_survive_transient_errors(
    injection: str, db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES[:4], 3, prompt="claim")
    # A claim whose answer is lost leases its items to nobody: they come back when the
    # lease runs out, an attempt spent each time; give them attempts enough for that.
    db.execute(
        "update public.generations set max_attempts = 10 where batch_id = any(%s)", (batches,)
    )
    async with worker_factory(
        noop, concurrency=2, poll_seconds=0.05, lease_seconds=1, recover_every_seconds=0.1
    ) as worker:
        armed = Armed(injection, "claim_generations", worker, db)
        await run_until([worker], lambda: armed.struck() and settled(db, batches), timeout=60)
    lost = armed.lost_claims()
    if injection == "transport-after-commit":
        assert lost, "no claim answer carrying items was lost"
    assert_completed_once(db, storage_root, batches, attempts={i: 1 + n for i, n in lost.items()})


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_heartbeats_survive_transient_errors(
    injection: str, db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """Each item renders longer than its lease: only the heartbeats, failing now and then,
    keep the leases. One that lapsed would show as a second attempt."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES[:4], 1)
    render = Render(seconds=1.5)
    async with worker_factory(
        lambda _n: render,
        concurrency=2,
        lease_seconds=1,
        heartbeat_seconds=0.1,
        recover_every_seconds=0.1,
    ) as worker:
        armed = Armed(injection, "heartbeat_generations", worker, db)
        await run_until(
            [worker],
            until_every_fault_struck(
                armed,
                db,
                batches,
                lambda: create_batches(db_url, storage_root, user, STYLES[:4], 1),
            ),
            timeout=60,
        )
    assert render.cancelled == 0
    assert_completed_once(db, storage_root, batches)


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_completions_survive_transient_errors(
    injection: str, db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """A completion resent after its commit is accepted again (same path), so the worker
    keeps the image it stored instead of discarding it."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES, 5, prompt="complete")
    async with worker_factory(
        lambda _n: Render(seconds=0.02), concurrency=1, poll_seconds=0.05
    ) as worker:
        armed = Armed(injection, "complete_generations", worker, db)
        # While a flush is retried the next items pile up for one later flush.
        [stats] = await run_until(
            [worker],
            until_every_fault_struck(
                armed,
                db,
                batches,
                lambda: create_batches(db_url, storage_root, user, STYLES, 1, prompt="more"),
            ),
            timeout=60,
        )
    assert (stats.completed, stats.discarded, stats.retried) == (len(batches) * len(STYLES), 0, 0)
    assert_completed_once(db, storage_root, batches)


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_failures_survive_transient_errors(
    injection: str,
    db: Any,
    db_url: str,
    storage_root: Path,
    worker_factory: Any,
    retry_base: Callable[[int], None],
) -> None:
    """Every item fails once (retryably), then succeeds: two attempts each, whatever the
    failure records went through. After a lost answer the resent record finds the item
    waiting out its backoff; when the backoff is already over, see
    test_a_failure_recorded_twice_does_not_fail_the_next_attempt."""
    retry_base(1 if injection == "transport-after-commit" else 0)
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES[:4], 3, prompt="fail")
    render = Render(fail_first=1)
    async with worker_factory(lambda _n: render, concurrency=2, poll_seconds=0.05) as worker:
        armed = Armed(injection, "fail_generation", worker, db)
        [stats] = await run_until(
            [worker], lambda: armed.struck() and settled(db, batches), timeout=60
        )
    assert stats.completed == 12
    assert_completed_once(db, storage_root, batches, attempts=dict.fromkeys(_ids(db, batches), 2))


def _ids(db: psycopg.Connection[Any], batch_ids: list[UUID]) -> list[UUID]:
    return [r["id"] for r in items_of(db, batch_ids)]


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_releases_survive_transient_errors(
    injection: str, db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """A worker stopping gives its running items back; one stop per error class, each
    release failing once. Released items are pending again, their attempt not counted."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES[:2], 1)
    kinds = list(DATABASE_ERRORS if injection == "database" else TRANSIENT_ERRORS)
    if injection == "database":
        plan_database_faults(db, "release_generations", every_other_database_call(kinds))
    for kind in kinds:
        scripted = None
        if injection != "database":
            fault = Fault(kind, TRANSIENT_ERRORS[kind], injection == "transport-after-commit")
            scripted = ScriptedFaults({"release_generations": {1: fault}})
        stats, render = await _claim_both_then_stop(worker_factory, scripted)
        if scripted is not None:
            assert not scripted.pending(), f"the release never failed with {kind}"
        # The answer of a release that committed is lost; its resend finds nothing left.
        assert stats.released == (0 if injection == "transport-after-commit" else 2)
        assert render.cancelled == 2
        assert [(r["status"], r["attempts"], r["lease_owner"]) for r in items_of(db, batches)] == [
            ("pending", 0, None)
        ] * 2, kind
    if injection == "database":
        assert database_calls(db, "release_generations") == 2 * len(kinds)
    async with worker_factory(noop) as worker:
        await run_until([worker], lambda: settled(db, batches), timeout=30)
    assert_completed_once(db, storage_root, batches)


async def _claim_both_then_stop(
    worker_factory: Any, faults: ScriptedFaults | None
) -> tuple[WorkerStats, Render]:
    """A worker claims both items, renders them until stopped, and stops: its stop gives
    them back."""
    render = Render(hold=asyncio.Event())
    async with (
        worker_factory(lambda _n: render, concurrency=2, shutdown_grace_seconds=0.05) as worker,
        Running() as running,
    ):
        if faults is not None:
            worker.queue.transport = HandlerTransport(worker.queue.transport, faults)
        running.start(worker)
        await until(lambda: render.running == 2, timeout=10, what="claims", running=running)
        [stats] = await running.stop()
    return stats, render


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_recoveries_survive_transient_errors(
    injection: str, db: Any, db_url: str, storage_root: Path, worker_factory: Any
) -> None:
    """A worker that died ("ghost") left leased items, expiring one after another while
    the recoveries fail now and then. Each is recovered once and completed by the worker
    on its second attempt."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES[:4], 2, prompt="recover")
    async with worker_factory(noop, recover_every_seconds=0.05, poll_seconds=0.05) as worker:
        ghost = WorkQueue(worker.queue.transport, "ghost", 60)
        assert len(await ghost.claim(8)) == 8
        db.execute(
            "update public.generations g set lease_expires_at = now() + r.n * interval '150 ms'"
            " from (select id, row_number() over (order by id) as n from public.generations"
            "        where batch_id = any(%s)) r where g.id = r.id",
            (batches,),
        )
        armed = Armed(injection, "recover_expired_leases", worker, db)
        await run_until([worker], lambda: armed.struck() and settled(db, batches), timeout=60)
    recoveries = db.execute(
        "select generation_id, count(*) as n from faults.transitions"
        " where batch_id = any(%s) and from_status = 'processing' and to_status = 'pending'"
        " and worker = 'ghost' group by generation_id",
        (batches,),
    ).fetchall()
    assert sorted(r["n"] for r in recoveries) == [1] * 8
    assert_completed_once(db, storage_root, batches, attempts=dict.fromkeys(_ids(db, batches), 2))


async def test_a_failure_recorded_twice_does_not_fail_the_next_attempt(
    db: Any,
    db_url: str,
    storage_root: Path,
    worker_factory: Any,
    retry_base: Callable[[int], None],
) -> None:
    """fail_generation commits (the item is pending again, its backoff over at once) and
    its answer is lost; before the resend, the same worker has claimed the item again and
    is rendering its second attempt. The resend must not record the first attempt's
    failure against the second one: the item completes on attempt 2."""
    retry_base(0)
    user = make_user(db_url)
    [batch] = create_batches(db_url, storage_root, user, ["poster"], 1)
    [item] = _ids(db, [batch])
    render = Render(seconds=0.5, fail_first=1)
    transport: HandlerTransport

    async def answer_lost_after_the_next_claim(call: Call) -> Any:
        answer = await call.forward()
        if call.function == "fail_generation" and call.number == 1:
            for _ in range(200):  # until the worker has claimed the item again
                if transport.claimed_ids().count(item) == 2:
                    break
                await asyncio.sleep(0.01)
            raise TRANSIENT_ERRORS["connection_dropped"]()
        return answer

    async with worker_factory(lambda _n: render, concurrency=2, poll_seconds=0.05) as worker:
        transport = HandlerTransport(worker.queue.transport, answer_lost_after_the_next_claim)
        worker.queue.transport = transport
        [stats] = await run_until(
            [worker],
            # The first attempt's task is abandoned once its item is claimed again, so its
            # failure may never be resent; if it is, the attempt in it keeps it off attempt 2.
            lambda: transport.claimed_ids().count(item) >= 2 and settled(db, [batch]),
            timeout=30,
        )
    assert transport.claimed_ids().count(item) >= 2, "the worker did not claim the item again"
    assert_completed_once(db, storage_root, [batch], attempts={item: 2})
    assert stats.completed == 1


# --- 2. a refusal in a side task stops the worker loudly ---------------------------------


@pytest.mark.parametrize("injection", ["transport", "database"])
@pytest.mark.parametrize("function", ["heartbeat_generations", "recover_expired_leases"])
async def test_a_refusal_in_a_side_task_stops_the_worker_loudly(
    function: str,
    injection: str,
    db: Any,
    db_url: str,
    storage_root: Path,
    worker_factory: Any,
) -> None:
    """A side task's call refused outright (not transient: 42501, NotAllowed) stops the
    worker at once, without waiting out its 30 s grace: run() raises WorkerFailed, the
    running items are given back untouched and nothing is left processing."""
    user = make_user(db_url)
    batches = create_batches(db_url, storage_root, user, STYLES[:2], 1)
    render = Render(hold=asyncio.Event())
    refusing = asyncio.Event()

    async def refuse(call: Call) -> Any:
        if refusing.is_set() and call.function == function:
            raise NotAllowed(f"permission denied for function {function}")
        return await call.forward()

    async with (
        worker_factory(
            lambda _n: render,
            concurrency=2,
            heartbeat_seconds=0.1,
            recover_every_seconds=0.1,
            shutdown_grace_seconds=30,
        ) as worker,
        Running() as running,
    ):
        worker.queue.transport = HandlerTransport(worker.queue.transport, refuse)
        run = running.start(worker)
        await until(lambda: render.running == 2, timeout=10, what="claims", running=running)
        if injection == "database":
            plan_database_faults(db, function, from_call=1, errcode="42501")
        else:
            refusing.set()
        with pytest.raises(WorkerFailed) as failed:
            took = await until(run.done, timeout=20, what="the worker to stop")
            run.result()
    assert took < 3, f"the worker took {took:.1f} s to stop"
    assert isinstance(failed.value.__cause__, NotAllowed)
    assert render.cancelled == 2
    assert worker.stats.released == 2
    assert [(r["status"], r["attempts"], r["lease_owner"]) for r in items_of(db, batches)] == [
        ("pending", 0, None)
    ] * 2
    assert [r for r in unfinished(db) if r["status"] == "processing"] == []
    assert ledger_balances(db) == []
    assert counter_mismatches(db) == []
    assert queue_mismatches(db) == []


# --- 5. a soak of random faults and racing users ------------------------------------------

SOAK_SECONDS = 45
SOAK_SEED = 20261203


class SoakGenerator:
    """A twentieth to two fifths of a second per image; now and then a retryable or a permanent
    failure, so items retry, run out of attempts, and users have failed items to retry."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        await asyncio.sleep(self.rng.uniform(0.05, 0.4))
        roll = self.rng.random()
        if roll < 0.10:
            raise RetryableGenerationError("upstream 503")
        if roll < 0.14:
            raise PermanentGenerationError("content policy")
        return await get_generator("noop").generate(request)


async def _racing_users(
    clients: list[Any], sources: list[str], rng: random.Random, until: float
) -> Counter[str]:
    """Users creating batches and, now and then, cancelling, deleting or retrying one,
    until ``until``; what came of it."""
    loop = asyncio.get_running_loop()
    created: list[tuple[Any, UUID]] = []
    outcomes: Counter[str] = Counter()
    while loop.time() < until:
        try:
            outcomes[await _user_action(clients, sources, rng, created)] += 1
        except (BatchFinished, BatchNotFound, NothingToRetry, InsufficientCredits) as exc:
            outcomes[exc.code] += 1  # refusals the contract documents for these races
        await asyncio.sleep(rng.uniform(0.02, 0.12))
    return outcomes


async def _user_action(
    clients: list[Any], sources: list[str], rng: random.Random, created: list[tuple[Any, UUID]]
) -> str:
    if rng.random() < 0.55 or not created:
        k = rng.randrange(len(clients))
        styles = rng.sample(STYLES, rng.randint(1, 5))
        created.append((clients[k], await clients[k].create_batch(styles, sources[k])))
        return "create"
    client, batch_id = rng.choice(created[-8:])  # likely still running
    action = rng.choice(["cancel", "delete", "retry", "retry failed"])
    if action == "cancel":
        await client.cancel_batch(batch_id)
    elif action == "delete":
        await client.delete_batch(batch_id)
    elif action == "retry":  # whatever state the batch is in, racing the workers
        await client.retry_failed(batch_id)
    else:  # a batch the user sees with failed items
        page = await client.list_batches(rng.choice(["partial", "failed"]), 5)
        if not page.items:
            return "nothing failed yet"
        await client.retry_failed(rng.choice(page.items).id)
    return action


async def test_soak_of_random_faults_strands_nothing(
    db: Any,
    storage_root: Path,
    worker_factory: Any,
    make_client: Callable[..., Any],
    retry_base: Callable[[int], None],
) -> None:
    """Two workers in one process, every call of theirs failing transiently now and then
    (half of those after the commit), while users create, cancel, delete and retry. When
    the dust settles: nothing pending or running, every item completed once, cancelled, or
    failed as the lifecycle allows, every end refunded once, counters and ledgers exact,
    and the stored results exactly the completed items' images."""
    retry_base(1)
    rng = random.Random(SOAK_SEED)
    clients = [make_client(credits=100_000) for _ in range(3)]
    sources = [await c.upload_source(sample_portrait_png()) for c in clients]
    generator = SoakGenerator(random.Random(rng.random()))
    faults = [RandomFaults(random.Random(rng.random()), 0.08, 0.5) for _ in range(2)]
    options = {
        "concurrency": 8,
        "lease_seconds": 2,
        "heartbeat_seconds": 0.3,
        "poll_seconds": 0.2,
        "recover_every_seconds": 0.3,
        "shutdown_grace_seconds": 10,
    }
    async with (
        worker_factory(lambda _n: generator, worker_id="soak-a", **options) as a,
        worker_factory(lambda _n: generator, worker_id="soak-b", **options) as b,
    ):
        for worker, handler in zip((a, b), faults, strict=True):
            worker.queue.transport = HandlerTransport(worker.queue.transport, handler)
        loop = asyncio.get_running_loop()
        racing = asyncio.create_task(
            _racing_users(clients, sources, random.Random(rng.random()), loop.time() + SOAK_SECONDS)
        )
        await run_until(
            [a, b],
            lambda: racing.done() and not unfinished(db),
            timeout=SOAK_SECONDS + 60,
            what="the soak to settle",
        )
        outcomes = racing.result()
    raced = (outcomes["cancel"], outcomes["delete"], outcomes["retry"] + outcomes["retry failed"])
    assert outcomes["create"] > 100 and min(raced) > 5, outcomes
    struck = Counter((i.function, i.after_commit) for f in faults for i in f.injected)
    for function in set(WORKER_CALLS) - {"release_generations"}:  # released only at the end
        assert struck[(function, False)] + struck[(function, True)] > 0, (function, struck)
    assert sum(n for (_f, after), n in struck.items() if after) > 20, struck
    _assert_nothing_stranded(db, storage_root, [UUID(c.user_id) for c in clients])


def _assert_nothing_stranded(
    db: psycopg.Connection[Any], storage_root: Path, users: list[UUID]
) -> None:
    """The users' items all ended as the lifecycle allows, each end refunded once, each
    completion once, and storage holds exactly the completed items' images."""
    assert unfinished(db) == []
    assert counter_mismatches(db) == []
    assert queue_mismatches(db) == []
    assert ledger_balances(db) == []
    batches = audited_batches(db, users)  # deleted ones too
    ever_completed = completions(db, batches)
    assert set(ever_completed.values()) == {1}, "an item completed twice"
    items = db.execute(
        "select id, batch_id, user_id, status::text as status, attempts, max_attempts,"
        " last_error, generated_image_url as image from public.generations"
        " where user_id = any(%s)",
        (users,),
    ).fetchall()
    assert {i["status"] for i in items} == {"completed", "failed", "cancelled"}
    results: dict[UUID, set[str]] = {b: set() for b in batches}
    for i in items:
        if i["status"] == "completed":
            assert ever_completed[i["id"]] == 1
            assert i["image"] == f"{i['user_id']}/{i['batch_id']}/{i['id']}-{i['attempts']}.png"
            results[i["batch_id"]].add(i["image"])
        else:
            assert i["image"] is None, i
        if i["status"] == "failed":
            # Out of attempts (failures or lapsed leases), or refused for good.
            assert i["attempts"] == i["max_attempts"] or i["last_error"] == "content policy", i
    # Every end (failed or cancelled, again after a retry) refunded, once each time.
    ends = db.execute(
        "select generation_id as id, count(*) as n from faults.transitions"
        " where to_status in ('failed', 'cancelled') and user_id = any(%s) group by 1",
        (users,),
    ).fetchall()
    refunds = db.execute(
        "select generation_id as id, count(*) as n from public.credit_ledger"
        " where kind = 'refund' and user_id = any(%s) group by 1",
        (users,),
    ).fetchall()
    assert {r["id"]: r["n"] for r in refunds} == {r["id"]: r["n"] for r in ends}
    # Discarded results were removed, and a deleted batch's folder is empty.
    for batch_id, owner in batches.items():
        assert result_files(storage_root, owner, batch_id) == results[batch_id], batch_id
