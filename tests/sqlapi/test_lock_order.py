"""Users and workers racing on the same batches never deadlock, and every count stays exact.

The contract's lock order (docs/contract.md): generations in ascending id, then their
batches, then profiles. Here a user cancelling, deleting and retrying a batch, and a worker
completing, heartbeating, failing, claiming, releasing and recovering its items, all start
on the same batch at the same instant (a barrier per batch), over a thousand-odd small
batches. Completions name their items in reverse order and heartbeats in random order, so
a writer that locks items in the order it is given, or a batch before its items, meets
another writer locking the other way round. `deadlock_timeout` is 10 ms on this module's
database, so a cycle is found (and reported as 40P01) at once instead of after a second.

The race finds a rare cycle now and then; the step-by-step test before it builds the one it
found (a call that listed its items, then changes one that turned pending or failed since,
against a delete holding that item) every time, with a held row lock and pg_stat_activity.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

from portraitkit.errors import PortraitkitError
from tests.invariants import counter_mismatches, queue_mismatches

from .conftest import Actor, ledger_balances

ROUNDS = 136
BATCHES_PER_ROUND = 8
USERS = 4
STYLES = ["pencil_sketch", "charcoal", "poster", "pixel_art", "noir", "vintage_photo"]
WORKER = "racer"  # holds the leases the race is about
SNATCHER = "snatcher"  # claims with a 1 s lease and never heartbeats: recovery has work
# Refusals the contract documents for what the race does to a batch: already ended, already
# deleted, no failed item. Anything else (40P01 above all) is a failure.
EXPECTED_REFUSALS = {"batch_finished", "batch_not_found", "nothing_to_retry"}


@pytest.fixture(scope="module")
def race_url(db_url: str) -> str:
    """This module's database, set so a deadlock shows within 10 ms."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        name = sql.Identifier(admin.info.dbname)
        for setting, value in [
            ("deadlock_timeout", "10ms"),
            ("statement_timeout", "60s"),  # a lost wake-up fails the test instead of hanging it
            ("synchronous_commit", "off"),  # a throwaway clone: don't wait for WAL flushes
        ]:
            admin.execute(
                sql.SQL("alter database {} set {} = {}").format(
                    name, sql.Identifier(setting), sql.Literal(value)
                )
            )
    return db_url


@dataclass
class Round:
    """The batches of one round, in the order every thread visits them, and the items the
    racing worker holds of each (sorted by id, so completions can go against it)."""

    batches: list[uuid.UUID]
    owner: dict[uuid.UUID, Actor]
    held: dict[uuid.UUID, list[dict[str, Any]]]
    doomed: set[uuid.UUID]  # the ones the delete thread deletes (it retries the others)


@dataclass
class Race:
    url: str
    users: list[Actor]
    rng: random.Random
    service: Actor = field(init=False)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.service = Actor(self.url, {"role": "service_role"})

    # --- arranging a round, serially ---------------------------------------------------

    def arrange(self) -> Round:
        owner: dict[uuid.UUID, Actor] = {}
        for _ in range(BATCHES_PER_ROUND):
            user = self.rng.choice(self.users)
            batch_id = user.rpc(
                "create_generation_batch",
                style_keys=self.rng.sample(STYLES, self.rng.randint(2, 4)),
                source_image_path=f"{user.user_id}/source.png",
            )
            owner[batch_id] = user
        claimed = self.service.rpc(
            "claim_generations", worker_id=WORKER, max_items=1000, lease_seconds=600
        )
        # Items of earlier rounds that came back to pending (retried, released, recovered):
        # finish them in one statement spanning batches, in no particular order.
        stale = [c for c in claimed if c["batch_id"] not in owner]
        self.rng.shuffle(stale)
        self.complete(self.service, stale)
        held: dict[uuid.UUID, list[dict[str, Any]]] = {b: [] for b in owner}
        for item in claimed:
            if item["batch_id"] in owner:
                held[item["batch_id"]].append(item)
        for batch_id in owner:
            held[batch_id] = self.shape(held[batch_id])
        batches = list(owner)
        self.rng.shuffle(batches)
        doomed = {b for b in batches if self.rng.random() < 0.5}
        return Round(batches, owner, held, doomed)

    def shape(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give a batch a starting mix: some items running, some waiting, some ended
        (so cancel, retry and delete all have something to do); returns those running."""
        kind = self.rng.choice(["running", "mixed", "mixed", "ended", "waiting"])
        choices = {
            "running": ["keep"],
            "mixed": ["keep", "keep", "release", "fail", "complete"],
            "ended": ["fail", "complete"],
            "waiting": ["release"],
        }[kind]
        fate = {item["id"]: self.rng.choice(choices) for item in items}
        if kind == "ended" and items:
            fate[items[0]["id"]] = "fail"  # something to retry
        self.complete(self.service, [i for i in items if fate[i["id"]] == "complete"])
        released = [i["id"] for i in items if fate[i["id"]] == "release"]
        if released:
            self.service.rpc("release_generations", worker_id=WORKER, generation_ids=released)
        for item in items:
            if fate[item["id"]] == "fail":
                self.service.rpc(
                    "fail_generation",
                    worker_id=WORKER,
                    generation_id=item["id"],
                    error="boom",
                    retryable=False,
                )
        kept = [i for i in items if fate[i["id"]] == "keep"]
        return sorted(kept, key=lambda i: i["id"])

    @staticmethod
    def complete(worker: Actor, items: list[dict[str, Any]]) -> Any:
        """Complete the items in the order given (paths in each owner's folder)."""
        if not items:
            return []
        return worker.rpc(
            "complete_generations",
            worker_id=WORKER,
            generation_ids=[i["id"] for i in items],
            image_paths=[f"{i['user_id']}/results/{i['id']}.png" for i in items],
        )

    # --- the race ------------------------------------------------------------------------

    def run(self, pool: ThreadPoolExecutor, actors: dict[str, Actor], plan: Round) -> None:
        barrier = threading.Barrier(len(ROLES), timeout=120)
        seeds = {role: self.rng.random() for role in ROLES}

        def thread(role: str) -> None:
            rng = random.Random(seeds[role])
            for step, batch_id in enumerate(plan.batches):
                barrier.wait()  # everyone on this batch at once
                self.attempt(role, actors[role], plan, step, batch_id, rng)

        for future in [pool.submit(thread, role) for role in ROLES]:
            future.result()

    def attempt(
        self,
        role: str,
        actor: Actor,
        plan: Round,
        step: int,
        batch_id: uuid.UUID,
        rng: random.Random,
    ) -> None:
        """One raced call, its outcome counted; a refusal outside the expected ones noted."""
        try:
            ROLES[role](actor, plan, step, batch_id, rng)
            outcome = "ok"
        except PortraitkitError as exc:
            cause = exc.__cause__
            # By its SQLSTATE: portraitkit maps a deadlock to a code of its own.
            outcome = "40P01" if getattr(cause, "sqlstate", None) == "40P01" else exc.code
            if exc.code not in EXPECTED_REFUSALS:
                where = cause.diag.context if isinstance(cause, psycopg.Error) else None
                with self.lock:
                    self.unexpected.append(f"{role}: {outcome} {exc.message} [{where}]")
        with self.lock:
            self.outcomes[(role, outcome)] += 1


def as_owner(actor: Actor, owner: Actor) -> Actor:
    """The thread's own connection, acting for the batch's owner (a new JWT, same pool)."""
    actor.claims, actor.user_id = owner.claims, owner.user_id
    return actor


def cancel(actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random) -> Any:
    return as_owner(actor, plan.owner[batch_id]).rpc("cancel_batch", batch_id=str(batch_id))


def delete_or_retry(
    actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random
) -> Any:
    function = "delete_batch" if batch_id in plan.doomed else "retry_failed"
    return as_owner(actor, plan.owner[batch_id]).rpc(function, batch_id=str(batch_id))


def retry(actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random) -> Any:
    return as_owner(actor, plan.owner[batch_id]).rpc("retry_failed", batch_id=str(batch_id))


def complete(actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random) -> Any:
    """The batch's running items in reverse id order, sometimes with the next batch's
    (one statement over two batches)."""
    items = list(reversed(plan.held[batch_id]))
    if step + 1 < len(plan.batches) and rng.random() < 0.3:
        items += reversed(plan.held[plan.batches[step + 1]])
    return Race.complete(actor, items)


def heartbeat(actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random) -> Any:
    """Every item the worker holds in this round, in random order."""
    ids = [i["id"] for items in plan.held.values() for i in items]
    rng.shuffle(ids)
    return actor.rpc("heartbeat_generations", worker_id=WORKER, generation_ids=ids)


def fail(actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random) -> Any:
    if not plan.held[batch_id]:
        return actor.rpc("recover_expired_leases")
    item = rng.choice(plan.held[batch_id])
    return actor.rpc(
        "fail_generation",
        worker_id=WORKER,
        generation_id=item["id"],
        error="boom",
        retryable=rng.random() < 0.5,
    )


def snatch(actor: Actor, plan: Round, step: int, batch_id: uuid.UUID, rng: random.Random) -> Any:
    """Another worker: claims what is pending with a 1 s lease, gives some back, and
    recovers expired leases (its own, from earlier rounds)."""
    if step % 2:
        return actor.rpc("recover_expired_leases")
    claimed = actor.rpc("claim_generations", worker_id=SNATCHER, max_items=3, lease_seconds=1)
    back = [c["id"] for c in claimed if rng.random() < 0.5]
    rng.shuffle(back)
    return actor.rpc("release_generations", worker_id=SNATCHER, generation_ids=back)


ROLES: dict[str, Callable[[Actor, Round, int, uuid.UUID, random.Random], Any]] = {
    "cancel": cancel,
    "delete_or_retry": delete_or_retry,
    "retry": retry,
    "complete": complete,
    "heartbeat": heartbeat,
    "fail": fail,
    "snatch": snatch,
}
USER_ROLES = {"cancel", "delete_or_retry", "retry"}


@pytest.fixture
def race(race_url: str, make_user: Any) -> Iterator[Race]:
    users = [make_user(credits=1_000_000) for _ in range(USERS)]
    race = Race(race_url, [Actor(race_url, u.claims, u.user_id) for u in users], random.Random(7))
    yield race
    for actor in [race.service, *race.users]:
        actor.close()


def wait_until_blocked(admin: psycopg.Connection[Any], actor: Actor) -> None:
    """Until the actor's backend waits for a lock (its call is parked on a row)."""
    pid = actor.conn.info.backend_pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "select wait_event_type from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        if row and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.005)
    raise AssertionError(f"backend {pid} never waited for a lock")


def in_background(pool: ThreadPoolExecutor, actor: Actor, function: str, **args: Any) -> Any:
    def call() -> Any:
        try:
            return actor.rpc(function, **args)
        except PortraitkitError as exc:
            return exc

    return pool.submit(call)


@pytest.mark.parametrize(
    ("function", "retryable"),
    [("cancel_batch", True), ("retry_failed", False)],
    ids=["cancel_meets_a_newly_pending_item", "retry_meets_a_newly_failed_item"],
)
def test_an_item_changing_state_while_a_user_call_waits_does_not_deadlock_a_delete(
    race_url: str, admin: Any, make_user: Any, function: str, retryable: bool
) -> None:
    """The race's rare deadlock, step by step: cancel (or retry) takes the locks of the items
    it will change, in id order, then changes items; an item that turned pending (or failed)
    in between must not be locked out of order while a delete holds it and waits for ours."""
    user = make_user(credits=100)
    users = [Actor(race_url, user.claims, user.user_id) for _ in range(2)]
    service = Actor(race_url, {"role": "service_role"})
    batch_id = users[0].rpc(
        "create_generation_batch",
        style_keys=["poster", "noir"],
        source_image_path=f"{user.user_id}/source.png",
    )
    first, second = (
        r["id"]
        for r in admin.execute(
            "select id from public.generations where batch_id = %s order by id", (batch_id,)
        )
    )
    # The higher id is what the call will change (pending, or failed); the lower one runs.
    running = [first] if retryable else [first, second]
    admin.execute(
        "update public.generations set status = 'processing', attempts = 1,"
        " lease_owner = %s, lease_expires_at = now() + interval '10 minutes'"
        " where id = any(%s)",
        (WORKER, running),
    )
    if not retryable:
        service.rpc("fail_generation", worker_id=WORKER, generation_id=second, error="x",
                    retryable=False)  # fmt: skip
    for actor in users:
        actor.conn.execute("select")  # connected before the threads share them
        actor.conn.rollback()
    holder = psycopg.connect(race_url)  # a slow writer holding the higher item for a moment
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        holder.execute("select from public.generations where id = %s for update", (second,))
        call = in_background(pool, users[0], function, batch_id=str(batch_id))
        wait_until_blocked(admin, users[0])  # it has listed its items, waits for `second`
        service.rpc("fail_generation", worker_id=WORKER, generation_id=first, error="x",
                    retryable=retryable)  # fmt: skip
        delete = in_background(pool, users[1], "delete_batch", batch_id=str(batch_id))
        wait_until_blocked(admin, users[1])  # holds `first`, waits for `second`
        holder.rollback()
        outcomes = [call.result(timeout=60), delete.result(timeout=60)]
    finally:
        holder.close()  # first, so that nothing waits on it any more
        pool.shutdown()
        for actor in [*users, service]:
            actor.close()
    errors = {
        name: f"{getattr(o.__cause__, 'sqlstate', None) or o.code}: {o.message}"
        for name, o in zip([function, "delete_batch"], outcomes, strict=True)
        if isinstance(o, PortraitkitError)
    }
    assert errors == {}
    assert counter_mismatches(admin) == []
    assert queue_mismatches(admin) == []
    assert ledger_balances(admin) == []


def test_users_and_workers_racing_on_one_batch_never_deadlock(
    race: Race, admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    actors = {
        role: Actor(race.url, None if role in USER_ROLES else {"role": "service_role"})
        for role in ROLES
    }
    try:
        with ThreadPoolExecutor(max_workers=len(ROLES)) as pool:
            for _ in range(ROUNDS):
                race.run(pool, actors, race.arrange())
    finally:
        for actor in actors.values():
            actor.close()

    raced = sum(race.outcomes.values())
    by_code = Counter(code for (_, code), n in race.outcomes.items() for _ in range(n))
    with capsys.disabled():
        print(
            f"\nlock order: {ROUNDS * BATCHES_PER_ROUND} batches, {raced} raced operations,"
            f" outcomes {dict(by_code)}"
        )
    deadlocks = Counter(
        role for (role, code), n in race.outcomes.items() for _ in range(n) if code == "40P01"
    )
    assert not deadlocks, (
        f"deadlocks in {raced} raced operations, by victim: {dict(deadlocks)};"
        f" first ones: {race.unexpected[:3]}"
    )
    assert race.unexpected == [], Counter(race.unexpected).most_common(10)
    assert counter_mismatches(admin) == []
    assert queue_mismatches(admin) == []
    assert ledger_balances(admin) == []
