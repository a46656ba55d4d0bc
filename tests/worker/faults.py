"""Fault injection for the worker's tests, against the real database.

Two ways to make a worker call fail, as the issue asks:

- :class:`HandlerTransport` wraps the worker's real transport and sends every call through
  a handler (httpx's ``MockTransport`` idea): :class:`ScriptedFaults` fails chosen calls
  of chosen functions, :class:`RandomFaults` fails any call with some probability. A fault
  may strike before the call reaches the database or after it committed (the answer lost).
- :func:`install_database_faults` adds a statement-level ``BEFORE UPDATE`` trigger on
  ``public.generations`` that raises a real SQLSTATE (or ends its own session) on chosen
  calls of a worker function, so the error travels the real path: PostgreSQL, psycopg,
  portraitkit's error mapping. Its call counters are sequences, which a rollback keeps.

And what every run is checked against: an audit of every status change (so "completed
exactly once" is a count, not a hope), the items' final rows, the stored results and the
ledgers.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from portraitkit.auth import create_local_user
from portraitkit.database.rpc import translate
from portraitkit.errors import PortraitkitError, RetryableGenerationError
from portraitkit.generators.base import GeneratedImage, GenerationRequest
from portraitkit.generators.noop import NoopGenerator
from portraitkit.transports.base import Transport
from tests.invariants import counter_mismatches, queue_mismatches
from tests.sqlapi.conftest import ledger_balances

WORKER_CALLS = (
    "claim_generations",
    "heartbeat_generations",
    "complete_generations",
    "fail_generation",
    "release_generations",
    "recover_expired_leases",
)


def _as_transport_raises(sqlstate: str, message: str) -> Callable[[], BaseException]:
    """The error the direct-Postgres transport raises when the server answers ``sqlstate``."""
    return lambda: translate(psycopg.errors.lookup(sqlstate)(message))


# Each transient error class, as a transport raises it to the worker.
TRANSIENT_ERRORS: dict[str, Callable[[], BaseException]] = {
    "serialization_failure": _as_transport_raises(
        "40001", "could not serialize access due to concurrent update"
    ),
    "deadlock": _as_transport_raises("40P01", "deadlock detected"),
    "lock_timeout": _as_transport_raises("55P03", "canceling statement due to lock timeout"),
    "statement_timeout": _as_transport_raises(
        "57014", "canceling statement due to statement timeout"
    ),
    "admin_shutdown": _as_transport_raises(
        "57P01", "terminating connection due to administrator command"
    ),
    # No answer at all: psycopg's own error, and the same as the transport maps it.
    "connection_dropped": lambda: psycopg.OperationalError(
        "server closed the connection unexpectedly"
    ),
    "database_unavailable": lambda: translate(
        psycopg.OperationalError("server closed the connection unexpectedly")
    ),
}

# The same classes raised inside the database; "drop" ends the calling session instead.
DATABASE_ERRORS: dict[str, str] = {
    "serialization_failure": "40001",
    "deadlock": "40P01",
    "lock_timeout": "55P03",
    "statement_timeout": "57014",
    "admin_shutdown": "57P01",
    "connection_dropped": "drop",
}


# --- a transport built from a handler -------------------------------------------------


@dataclass
class Call:
    """One call a worker made: ``forward()`` sends it to the real transport."""

    function: str
    args: Mapping[str, Any]
    number: int  # 1 for the first call of this function on this transport
    forward: Callable[[], Awaitable[Any]]


Handler = Callable[[Call], Awaitable[Any]]


async def passthrough(call: Call) -> Any:
    return await call.forward()


class HandlerTransport:
    """A transport whose calls go through ``handler``; tables are read from ``inner``.

    It records what the database answered (``answers``, per function) and every error the
    database raised (``database_errors``), whatever the handler then made of them."""

    def __init__(self, inner: Transport, handler: Handler = passthrough) -> None:
        self.inner = inner
        self.handler = handler
        self.counts: Counter[str] = Counter()
        self.answers: dict[str, list[Any]] = {}
        self.database_errors: list[BaseException] = []

    async def rpc(
        self, function: str, args: Mapping[str, Any] | None = None, *, retry_safe: bool = False
    ) -> Any:
        self.counts[function] += 1

        async def forward() -> Any:
            try:
                answer = await self.inner.rpc(function, args, retry_safe=retry_safe)
            except Exception as exc:
                self.database_errors.append(exc)
                raise
            self.answers.setdefault(function, []).append(answer)
            return answer

        return await self.handler(Call(function, args or {}, self.counts[function], forward))

    async def select(
        self, table: str, *, columns: Any = ("*",), order: Any = ()
    ) -> list[dict[str, Any]]:
        return await self.inner.select(table, columns=columns, order=order)

    @property
    def user_id(self) -> str | None:
        return self.inner.user_id

    async def aclose(self) -> None:
        await self.inner.aclose()

    def claimed_ids(self) -> list[UUID]:
        """Every item a claim of this transport leased, answer lost or not."""
        return [
            UUID(str(r["id"])) for rows in self.answers.get("claim_generations", []) for r in rows
        ]


@dataclass(frozen=True)
class Fault:
    kind: str
    error: Callable[[], BaseException]
    after_commit: bool = False  # the call did its work; only its answer is lost


@dataclass
class Injected:
    function: str
    number: int
    kind: str
    after_commit: bool
    lost_answer: Any = None


class ScriptedFaults:
    """Fails the calls the script names: ``{function: {call number: Fault}}``."""

    def __init__(self, script: Mapping[str, Mapping[int, Fault]]) -> None:
        self.script = script
        self.injected: list[Injected] = []

    async def __call__(self, call: Call) -> Any:
        fault = self.script.get(call.function, {}).get(call.number)
        if fault is None:
            return await call.forward()
        record = Injected(call.function, call.number, fault.kind, fault.after_commit)
        if fault.after_commit:
            record.lost_answer = await call.forward()
        self.injected.append(record)
        raise fault.error()

    def pending(self) -> list[tuple[str, int]]:
        """Scripted faults not injected yet (the worker has not made those calls)."""
        done = {(i.function, i.number) for i in self.injected}
        return [(f, n) for f, calls in self.script.items() for n in calls if (f, n) not in done]


def every_other_call(kinds: Iterable[str], *, after_commit: bool = False) -> dict[int, Fault]:
    """Calls 1, 3, 5, ... fail, one error class each; each retry in between succeeds, so
    the retries never wait long (backoff grows only over consecutive failures)."""
    return {
        2 * i + 1: Fault(kind, TRANSIENT_ERRORS[kind], after_commit) for i, kind in enumerate(kinds)
    }


class RandomFaults:
    """Fails each call of the worker's functions with ``probability``, a share of them after
    the commit, drawing error classes at random (seeded, so a failure can be replayed)."""

    def __init__(self, rng: random.Random, probability: float, after_commit_share: float):
        self.rng = rng
        self.probability = probability
        self.after_commit_share = after_commit_share
        self.injected: list[Injected] = []

    async def __call__(self, call: Call) -> Any:
        if call.function not in WORKER_CALLS or self.rng.random() >= self.probability:
            return await call.forward()
        kind = self.rng.choice(sorted(TRANSIENT_ERRORS))
        record = Injected(
            call.function, call.number, kind, self.rng.random() < self.after_commit_share
        )
        if record.after_commit:
            record.lost_answer = await call.forward()
        self.injected.append(record)
        raise TRANSIENT_ERRORS[kind]()


# --- faults raised by the database itself -----------------------------------------------

_DATABASE_FAULTS_SQL = """
create schema if not exists faults;
create table if not exists faults.plan (
  function text not null,
  first_call bigint not null,
  last_call bigint not null,
  errcode text not null
);
{sequences}
-- Which worker function is running is read from the statement the client sent; the
-- count is a sequence, so the rollback the error causes does not undo it.
create or replace function faults.inject() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  called text := substring(current_query() from '{pattern}');
  n bigint;
  code text;
begin
  if called is null then
    return null;
  end if;
  n := nextval(format('faults.%I', called)::regclass);
  select p.errcode into code from faults.plan p
   where p.function = called and n between p.first_call and p.last_call
   limit 1;
  if code = 'drop' then
    perform pg_terminate_backend(pg_backend_pid());
    perform pg_sleep(5);  -- the session ends here, at the first interrupt check
  elsif code is not null then
    raise exception 'injected fault: call % of %', n, called using errcode = code;
  end if;
  return null;
end
$$;
drop trigger if exists inject_faults on public.generations;
create trigger inject_faults
  before update on public.generations
  for each statement execute function faults.inject();
"""


def install_database_faults(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        _DATABASE_FAULTS_SQL.format(
            sequences="\n".join(f"create sequence if not exists faults.{f};" for f in WORKER_CALLS),
            pattern="(" + "|".join(WORKER_CALLS) + ")",
        ).encode()
    )


def reset_database_faults(conn: psycopg.Connection[Any]) -> None:
    conn.execute("truncate faults.plan")
    for function in WORKER_CALLS:
        conn.execute(sql.SQL("alter sequence faults.{} restart").format(sql.Identifier(function)))


def plan_database_faults(
    conn: psycopg.Connection[Any],
    function: str,
    errors: Mapping[int, str] | None = None,
    *,
    from_call: int | None = None,
    errcode: str | None = None,
) -> None:
    """Make calls of ``function`` fail in the database: ``errors`` maps a call number to an
    SQLSTATE (or "drop"); ``from_call`` with ``errcode`` fails that call and every later one."""
    for number, code in (errors or {}).items():
        conn.execute(
            "insert into faults.plan values (%s, %s, %s, %s)", (function, number, number, code)
        )
    if from_call is not None:
        conn.execute(
            "insert into faults.plan values (%s, %s, %s, %s)",
            (function, from_call, 2**62, errcode),
        )


def database_calls(conn: psycopg.Connection[Any], function: str) -> int:
    """How many calls of ``function`` reached the database (faulted ones included)."""
    row = conn.execute(
        sql.SQL("select case when is_called then last_value else 0 end as n from faults.{}").format(
            sql.Identifier(function)
        )
    ).fetchone()
    assert row is not None
    return int(row["n"])


def every_other_database_call(kinds: Iterable[str]) -> dict[int, str]:
    return {2 * i + 1: DATABASE_ERRORS[kind] for i, kind in enumerate(kinds)}


# --- the audit ---------------------------------------------------------------------------

_AUDIT_SQL = """
create schema if not exists faults;
create table if not exists faults.transitions (
  seq bigserial primary key,
  generation_id uuid not null,
  batch_id uuid not null,
  user_id uuid not null,
  from_status text,
  to_status text,
  attempts integer,
  worker text,
  image text,
  at timestamptz not null default clock_timestamp()
);
create or replace function faults.audit() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' then
    insert into faults.transitions (generation_id, batch_id, user_id, from_status, attempts)
    values (old.id, old.batch_id, old.user_id, old.status, old.attempts);
  else
    insert into faults.transitions
      (generation_id, batch_id, user_id, from_status, to_status, attempts, worker, image)
    values (new.id, new.batch_id, new.user_id, case when tg_op = 'UPDATE' then old.status::text end,
            new.status, new.attempts,
            coalesce(new.lease_owner, case when tg_op = 'UPDATE' then old.lease_owner end),
            new.generated_image_url);
  end if;
  return null;
end
$$;
drop trigger if exists audit_status_changes on public.generations;
create trigger audit_status_changes
  after update of status on public.generations
  for each row when (old.status is distinct from new.status)
  execute function faults.audit();
drop trigger if exists audit_inserts_and_deletes on public.generations;
create trigger audit_inserts_and_deletes
  after insert or delete on public.generations
  for each row execute function faults.audit();
"""


def install_audit(conn: psycopg.Connection[Any]) -> None:
    """Record every status change of every generation in ``faults.transitions``."""
    conn.execute(_AUDIT_SQL.encode())


def completions(conn: psycopg.Connection[Any], batch_ids: Iterable[UUID]) -> Counter[UUID]:
    """How many times each item of the batches (deleted ones too) became completed."""
    rows = conn.execute(
        "select generation_id from faults.transitions"
        " where to_status = 'completed' and batch_id = any(%s)",
        (list(batch_ids),),
    ).fetchall()
    return Counter(r["generation_id"] for r in rows)


def audited_batches(conn: psycopg.Connection[Any], user_ids: Iterable[UUID]) -> dict[UUID, UUID]:
    """Every batch of these users the audit saw, deleted ones too: batch id -> owner."""
    rows = conn.execute(
        "select distinct batch_id, user_id from faults.transitions where user_id = any(%s)",
        (list(user_ids),),
    ).fetchall()
    return {r["batch_id"]: r["user_id"] for r in rows}


# --- arranging work ------------------------------------------------------------------


def make_user(db_url: str, credits: int = 10_000) -> UUID:
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", credits)
    return UUID(str(user.id))


def create_batches(
    db_url: str,
    storage_root: Path,
    user_id: UUID,
    styles: list[str],
    count: int = 1,
    *,
    prompt: str | None = None,
) -> list[UUID]:
    """Create batches through the contract, as the user would; fast enough for thousands
    of items (the noop generator never decodes the source, so any bytes will do)."""
    source = f"{user_id}/sources/photo.png"
    path = storage_root / "portraits" / source
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG not really")
    claims = json.dumps({"sub": str(user_id), "role": "authenticated"})
    ids = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for n in range(count):
            ids.append(
                _create_batch(conn, claims, styles, source, prompt, n if count > 1 else None)
            )
    return ids


def _create_batch(
    conn: psycopg.Connection[Any],
    claims: str,
    styles: list[str],
    source: str,
    prompt: str | None,
    n: int | None,
) -> UUID:
    if prompt is not None and n is not None:
        prompt = f"{prompt} {n}"  # tells the batches' requests apart
    with conn.transaction():
        conn.execute(
            "select set_config('role', 'authenticated', true),"
            " set_config('request.jwt.claims', %s, true)",
            (claims,),
        )
        row = conn.execute(
            "select public.create_generation_batch(%s, %s, %s)", (styles, source, prompt)
        ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


# --- generators ------------------------------------------------------------------------


class Render:
    """A generator for these tests: the noop image after ``seconds``.

    The first ``fail_first`` calls for each request (style and prompt: one item) fail
    retryably; with ``hold``, every call waits for that event first. It counts calls and
    the calls cancelled under it."""

    def __init__(
        self, seconds: float = 0.0, *, fail_first: int = 0, hold: asyncio.Event | None = None
    ) -> None:
        self.seconds = seconds
        self.fail_first = fail_first
        self.hold = hold
        self.calls: Counter[tuple[str, str | None]] = Counter()
        self.running = 0
        self.cancelled = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        key = (request.style_key, request.custom_prompt)
        self.calls[key] += 1
        self.running += 1
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.seconds:
                await asyncio.sleep(self.seconds)
            if self.calls[key] <= self.fail_first:
                raise RetryableGenerationError("upstream 503")
            return await NoopGenerator().generate(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


# --- running workers ------------------------------------------------------------------


class Running:
    """Workers running, each until the block ends (``async with Running() as running``) or
    :meth:`stop` is called; stopped and awaited even when the test fails in the block."""

    def __init__(self) -> None:
        self.runs: dict[Any, asyncio.Task[Any]] = {}

    def start(self, worker: Any) -> asyncio.Task[Any]:
        self.runs[worker] = asyncio.create_task(worker.run(), name=worker.options.worker_id)
        return self.runs[worker]

    def check(self) -> None:
        """Fail if a worker's run ended before it was told to stop."""
        for task in self.runs.values():
            if task.done():
                error = None if task.cancelled() else task.exception()
                raise AssertionError(f"worker {task.get_name()} exited early: {error!r}")

    async def stop(self) -> list[Any]:
        """Stop every worker; their stats, in the order they were started."""
        self.check()
        for worker in self.runs:
            worker.stop()
        return list(await asyncio.wait_for(asyncio.gather(*self.runs.values()), 60))

    async def __aenter__(self) -> Running:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in self.runs:
            worker.stop()
        _done, late = await asyncio.wait(self.runs.values(), timeout=60)
        for task in late:
            task.cancel()
        await asyncio.gather(*self.runs.values(), return_exceptions=True)


async def until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    running: Running | None = None,
) -> float:
    """Wait for ``condition``; how long it took. Fails after ``timeout`` seconds, or as
    soon as a worker of ``running`` ends (none may stop before it is told to)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if running is not None:
            running.check()
        if loop.time() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time() - started


async def run_until(
    workers: list[Any],
    done: Callable[[], bool],
    *,
    timeout: float,
    what: str = "the queue to settle",
) -> list[Any]:
    """Run the workers until ``done()``, then stop them; their stats. Fails if a worker's
    run ends before it is stopped (it must survive everything the test throws at it)."""
    async with Running() as running:
        for worker in workers:
            running.start(worker)
        await until(done, timeout=timeout, what=what, running=running)
        return await running.stop()


# --- checks ----------------------------------------------------------------------------


def statuses(conn: psycopg.Connection[Any], batch_ids: Iterable[UUID]) -> Counter[str]:
    rows = conn.execute(
        "select status::text as status from public.generations where batch_id = any(%s)",
        (list(batch_ids),),
    ).fetchall()
    return Counter(r["status"] for r in rows)


def settled(conn: psycopg.Connection[Any], batch_ids: Iterable[UUID]) -> bool:
    counts = statuses(conn, batch_ids)
    return counts["pending"] == 0 and counts["processing"] == 0


def unfinished(conn: psycopg.Connection[Any]) -> list[Any]:
    """Items anywhere in the database still pending or processing."""
    return conn.execute(
        "select id, status, lease_owner, attempts from public.generations"
        " where status in ('pending', 'processing')"
    ).fetchall()


def result_files(storage_root: Path, user_id: Any, batch_id: Any) -> set[str]:
    folder = storage_root / "portraits" / str(user_id) / str(batch_id)
    return (
        {f"{user_id}/{batch_id}/{p.name}" for p in folder.glob("*")} if folder.exists() else set()
    )


def history(conn: psycopg.Connection[Any], generation_id: UUID) -> list[str]:
    """An item's status changes, as the audit recorded them: ``from>to #attempt worker``."""
    rows = conn.execute(
        "select from_status, to_status, attempts, worker, image from faults.transitions"
        " where generation_id = %s order by seq",
        (generation_id,),
    ).fetchall()
    return [
        f"{r['from_status']}>{r['to_status']} #{r['attempts']} {r['worker'] or ''}"
        + (f" {r['image'].rsplit('/', 1)[-1]}" if r["image"] else "")
        for r in rows
    ]


def completed_once_problems(
    conn: psycopg.Connection[Any],
    storage_root: Path,
    batch_ids: list[UUID],
    attempts: Mapping[UUID, int] | None = None,
) -> list[str]:
    """What keeps the batches from "every item completed exactly once, on the attempt
    expected (1 unless ``attempts`` says otherwise), its one result stored at that
    attempt's path and nothing else in the batch's folder; counters and ledgers exact;
    nothing left running anywhere". Empty when all is well."""
    rows = conn.execute(
        "select g.id, g.batch_id, g.user_id, g.status::text as status, g.attempts,"
        " g.generated_image_url as image, b.status::text as batch_status"
        " from public.generations g join public.generation_batches b on b.id = g.batch_id"
        " where g.batch_id = any(%s) order by g.id",
        (batch_ids,),
    ).fetchall()
    if not rows:
        return ["no items"]
    expected = attempts or {}
    done = completions(conn, batch_ids)
    problems = []
    for r in rows:
        want = expected.get(r["id"], 1)
        path = f"{r['user_id']}/{r['batch_id']}/{r['id']}-{want}.png"
        if (r["status"], r["attempts"], r["image"], done[r["id"]]) != ("completed", want, path, 1):
            problems.append(
                f"item {r['id']}: {r['status']} on attempt {r['attempts']} (expected completed"
                f" on attempt {want}), completed {done[r['id']]} times, result {r['image']};"
                f" history: {history(conn, r['id'])}"
            )
    for batch_id in batch_ids:
        mine = [r for r in rows if r["batch_id"] == batch_id]
        if {r["batch_status"] for r in mine} != {"completed"}:
            problems.append(f"batch {batch_id} is {mine[0]['batch_status']}")
        stored = result_files(storage_root, mine[0]["user_id"], batch_id)
        if stored != {r["image"] for r in mine}:
            problems.append(f"batch {batch_id} stores {sorted(stored)}")
    for what, found in [
        ("batch counters off", counter_mismatches(conn)),
        ("queue rows off", queue_mismatches(conn)),
        ("balances the ledger does not explain", ledger_balances(conn)),
        ("items left pending or processing", unfinished(conn)),
    ]:
        if found:
            problems.append(f"{what}: {found}")
    return problems


def assert_completed_once(
    conn: psycopg.Connection[Any],
    storage_root: Path,
    batch_ids: list[UUID],
    attempts: Mapping[UUID, int] | None = None,
) -> None:
    problems = completed_once_problems(conn, storage_root, batch_ids, attempts)
    assert not problems, "\n".join(problems)


def error_kinds(errors: Iterable[BaseException]) -> Counter[str]:
    """SQLSTATEs (or error codes) of errors, for "which errors did the database raise"."""
    kinds: Counter[str] = Counter()
    for exc in errors:
        if isinstance(exc, PortraitkitError):
            kinds[str(exc.details.get("sqlstate") or exc.code)] += 1
        else:
            kinds[type(exc).__name__] += 1
    return kinds
