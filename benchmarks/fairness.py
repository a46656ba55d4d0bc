"""Fairness of the queue: small batches behind one user's backlog, and what a claim costs
with 100,000 pending items.

Small batches behind a backlog. One user has 10,000 pending items (bulk-loaded with the
fair tags the queue gives them) and one worker process (portraitkit's Worker, wired as
`service.open_worker` wires it, from `_queue_runners`; concurrency 64) drains them. Once
40% are done, 50 other users each create a 4-item batch with `create_generation_batch`
(as the user, one transaction each), one after another (or one every `--spacing-ms`); a
batch's latency runs from its creation (`generation_batches.created_at`) to its
completion (`finished_at`), both server time. Baseline: the same 50 batches reaching the
same idle worker with an empty queue. Target: p95 with the backlog ≤ 1.5x the baseline's
p95. Beside it, how many backlog items were claimed while a small batch waited (queue
order, free of the machine's noise). The backlog's own items per second until the small
batches arrive is set against the same items spread over 100 users (a user alone must
get every free slot, not a share). With the noop generator and one that waits a fixed
20 ms (rendering elsewhere: a slot held, no CPU); rounds interleaved.

Claims at 100,000 pending items. 100,000 pending items of 10,000 users (10 each) against
1,000 of 100 users: `claim_generations(max_items => 16)` as the service role, each call
in a transaction rolled back afterwards (the queue stays as loaded; both queues vacuumed
alike every 20 rounds), sampled alternately with: the claim under each `plan_cache_mode`,
its inner select alone, the same select with index scans off (the Sort a claim must never
need, for contrast), and creating a 4-item batch (its trigger looks up the fair tag). Then
the plan of the inner select as the function runs it (auto_explain, after the samples).
Index-driven: an index scan in fair-tag order, no Sort over the pending rows, and about
the same cost at both sizes (target: the claim's server CPU ratio ≤ 1.2).

    .venv/bin/python benchmarks/fairness.py [--quick] [--json] [--database-url URL]
        [--only latency,claims] [--rounds N] [--backlog N] [--concurrency N]
        [--processes N] [--spacing-ms MS] [--pending N] [--samples N]
"""

from __future__ import annotations

import multiprocessing as mp
import random
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from _common import (
    SERVICE_CLAIMS,
    BackendCpu,
    Connection,
    as_claims,
    bench_server,
    emit,
    load_batches,
    log,
    make_users,
    open_connection,
    parser,
    percentile,
    ratio,
    scalar,
    scratch_database,
    server_facts,
    user_claims,
    verdict,
)
from _queue_runners import FIXED_TIME_GENERATOR, serve
from rich.table import Table

from portraitkit.database import rpc

BACKLOG_BATCH = 10  # the backlog as batches of 10 styles
SMALL_USERS = 50
SMALL_BATCH = 4
SPREAD_USERS = 100
ALONE_SHARE = 0.4  # the small batches arrive once this share of the backlog is done
RENDER_SECONDS = 0.02
LATENCY_TARGET = 1.5
GENERATORS = {"noop": "noop", FIXED_TIME_GENERATOR: f"fixed {RENDER_SECONDS * 1e3:g} ms"}
RUN_TIMEOUT = 300.0
CREDITS = 1_000_000_000

CLAIM_ITEMS = 16
ITEMS_PER_USER = 10  # both claim queues: users with one 10-item batch each
BASELINE_PENDING = 1_000
CLAIM_TARGET = 1.2
WARMUP = 20
TIDY_EVERY = 20  # rounds of calls between two vacuums of each claim queue


# -- small batches behind a backlog -----------------------------------------------------


@dataclass(frozen=True)
class Cast:
    """The users of a latency run, the same in every copy of the template."""

    backlog: uuid.UUID
    small: list[uuid.UUID]
    spread: list[uuid.UUID]
    styles: list[str]


@dataclass
class Run:
    generator: str
    scenario: str  # empty | backlog | spread
    latencies: list[float]  # seconds, one per small batch
    alone_per_second: float | None = None  # queued items/s before the small batches came
    meanwhile_per_second: float | None = None  # backlog items/s while they ran
    backlog_left: int | None = None  # backlog items still to do when the last one finished
    # per small batch: backlog items claimed after its creation, before its last item's claim
    ahead: list[int] = field(default_factory=list)


@contextmanager
def latency_template(server_url: str) -> Iterator[tuple[str, Cast]]:
    with scratch_database(server_url, "fair_tpl") as url:
        with open_connection(url, autocommit=True) as conn:
            cast = Cast(
                make_users(conn, 1, credits=CREDITS, label="backlog")[0],
                make_users(conn, SMALL_USERS, credits=CREDITS, label="small"),
                make_users(conn, SPREAD_USERS, credits=CREDITS, label="spread"),
                [
                    r[0]
                    for r in conn.execute(
                        "select key from public.styles where is_active order by key limit %s",
                        (SMALL_BATCH,),
                    )
                ],
            )
        yield str(psycopg.conninfo.conninfo_to_dict(url)["dbname"]), cast


@contextmanager
def running_workers(
    context: Any, url: str, settings: dict[str, Any], processes: int
) -> Iterator[tuple[Any, list[Any]]]:
    """Worker processes connected and waiting; yields their go event and the processes."""
    ready, go = context.Queue(), context.Event()
    procs = [
        context.Process(target=serve, daemon=True, args=("portraitkit", url, settings, ready, go))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        yield go, procs
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: in-flight items finish, the rest go back
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def latency_run(
    context: Any,
    server_url: str,
    template: str,
    cast: Cast,
    generator: str,
    scenario: str,
    args: Any,
) -> Run:
    owners = {"backlog": [cast.backlog], "spread": cast.spread}.get(scenario, [])
    with scratch_database(server_url, "fair", template=template) as url:
        if owners:
            batches = args.backlog // BACKLOG_BATCH
            per_user = {
                u: batches // len(owners) + (n < batches % len(owners))
                for n, u in enumerate(owners)
            }
            with open_connection(url) as conn:
                load_batches(conn, per_user, BACKLOG_BATCH, mix={"pending": 100})
                conn.commit()
        with open_connection(url, autocommit=True) as conn:
            conn.execute("vacuum analyze public.generations")
            conn.execute("vacuum analyze public.generation_batches")
            conn.execute("checkpoint")
            settings = {
                "options": {"concurrency": args.concurrency, "generator": generator},
                "render_seconds": RENDER_SECONDS,
            }
            with running_workers(context, url, settings, args.processes) as (go, procs):
                (started,) = conn.execute("select clock_timestamp()").fetchone()
                go.set()
                if not owners:
                    time.sleep(0.5)  # the worker's first look at the queue is behind it
                    return Run(
                        generator,
                        scenario,
                        latencies(conn, submit(conn, cast, args.spacing), procs),
                    )
                wait_for(conn, owners, int(args.backlog * ALONE_SHARE), procs)
                if scenario == "spread":
                    (now,) = conn.execute("select clock_timestamp()").fetchone()
                    return Run(generator, scenario, [], done_per_second(conn, owners, started, now))
                small = submit(conn, cast, args.spacing)
                return backlog_run(conn, generator, owners, started, small, procs)


def submit(conn: Connection, cast: Cast, spacing: float) -> list[uuid.UUID]:
    """Each small user creates one batch, one every `spacing` seconds (0: one after
    another, as fast as they go); their ids."""
    with conn.transaction(force_rollback=True):  # a first call costs more: not a sample's
        _create(conn, cast, cast.small[0], -1)
    ids, start = [], time.perf_counter()
    for n, user in enumerate(cast.small):
        time.sleep(max(0.0, start + n * spacing - time.perf_counter()))
        ids.append(_create(conn, cast, user, n))
    return ids


def _create(conn: Connection, cast: Cast, user: uuid.UUID, n: int) -> uuid.UUID:
    created = rpc.call(
        conn,
        "create_generation_batch",
        {"style_keys": cast.styles, "source_image_path": f"{user}/bench/{n}.png"},
        claims=user_claims(user),
    )
    return uuid.UUID(str(scalar(created, "create_generation_batch")))


def latencies(conn: Connection, batches: list[uuid.UUID], procs: list[Any]) -> list[float]:
    """Once every batch has finished: seconds from each one's creation to its completion."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        (left,) = conn.execute(
            "select count(*) from public.generation_batches"
            " where id = any(%s) and finished_at is null",
            (batches,),
        ).fetchone()
        if not left:
            break
        if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
            raise RuntimeError(f"{left} small batches not finished in time, or a worker died")
        time.sleep(0.01)
    rows = conn.execute(
        "select extract(epoch from finished_at - created_at)::float8, status::text"
        "  from public.generation_batches where id = any(%s)",
        (batches,),
    ).fetchall()
    if any(status != "completed" for _, status in rows):
        raise RuntimeError("a small batch did not complete")
    return [seconds for seconds, _ in rows]


def wait_for(conn: Connection, owners: list[uuid.UUID], done: int, procs: list[Any]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while (
        conn.execute(
            "select coalesce(sum(completed_count), 0) from public.generation_batches"
            " where user_id = any(%s)",
            (owners,),
        ).fetchone()[0]
        < done
    ):
        if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
            raise RuntimeError(f"{done} queued items not done in time, or a worker died")
        time.sleep(0.05)


def done_per_second(
    conn: Connection, owners: list[uuid.UUID], since: datetime, until: datetime
) -> float:
    """The owners' items completed from `since` to `until`, per second (up to the last)."""
    count, last = conn.execute(
        "select count(*), max(finished_at) from public.generations"
        " where user_id = any(%s) and status = 'completed' and finished_at > %s"
        "   and finished_at <= %s",
        (owners, since, until),
    ).fetchone()
    return float(count / (last - since).total_seconds()) if count else 0.0


def backlog_run(
    conn: Connection,
    generator: str,
    owners: list[uuid.UUID],
    started: datetime,
    small: list[uuid.UUID],
    procs: list[Any],
) -> Run:
    values = latencies(conn, small, procs)
    first, last = conn.execute(
        "select min(created_at), max(finished_at) from public.generation_batches"
        " where id = any(%s)",
        (small,),
    ).fetchone()
    (left,) = conn.execute(
        "select count(*) from public.generations where user_id = any(%s)"
        "   and (status <> 'completed' or finished_at > %s)",
        (owners, last),
    ).fetchone()
    ahead = conn.execute(
        """
        select (select count(*) from public.generations o
                 where o.user_id = any(%(owners)s)
                   and o.started_at > b.created_at and o.started_at < l.last_claim)
          from public.generation_batches b
         cross join lateral (select max(g.started_at) as last_claim from public.generations g
                              where g.batch_id = b.id) l
         where b.id = any(%(small)s)
        """,
        {"owners": owners, "small": small},
    ).fetchall()
    return Run(
        generator,
        "backlog",
        values,
        alone_per_second=done_per_second(conn, owners, started, first),
        meanwhile_per_second=done_per_second(conn, owners, first, last),
        backlog_left=int(left),
        ahead=[int(r[0]) for r in ahead],
    )


def measure_latency(server_url: str, args: Any) -> list[Run]:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(
        ["_queue_runners", "portraitkit.worker", "portraitkit.transports.postgres"]
    )
    runs: list[Run] = []
    with latency_template(server_url) as (template, cast):
        for round_no in range(args.rounds):
            for generator in GENERATORS:
                scenarios = ["empty", "backlog", "spread"]
                shift = round_no % len(scenarios)
                for scenario in scenarios[shift:] + scenarios[:shift]:
                    run = latency_run(
                        context, server_url, template, cast, generator, scenario, args
                    )
                    log.print(
                        f"[dim]round {round_no + 1}/{args.rounds}  {generator:<10} "
                        f"{scenario:<8} {describe(run)}[/]"
                    )
                    runs.append(run)
    return runs


def describe(run: Run) -> str:
    parts = []
    if run.latencies:
        parts.append(f"p95 {percentile(run.latencies, 95) * 1e3:,.0f} ms")
    if run.alone_per_second is not None:
        parts.append(f"{run.alone_per_second:,.0f} items/s alone")
    if run.backlog_left is not None:
        parts.append(f"{run.backlog_left:,} backlog items left")
    return ", ".join(parts)


def latency_results(runs: list[Run], args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for generator, label in GENERATORS.items():
        mine = {
            s: [r for r in runs if r.generator == generator and r.scenario == s]
            for s in ("empty", "backlog", "spread")
        }
        stats = {
            s: _latency_stats([x for r in mine[s] for x in r.latencies])
            for s in ("empty", "backlog")
        }
        alone = [r.alone_per_second or 0.0 for r in mine["backlog"]]
        spread = [r.alone_per_second or 0.0 for r in mine["spread"]]
        p95_ratio = ratio(stats["backlog"]["p95_ms"], stats["empty"]["p95_ms"])
        out[generator] = {
            "label": label,
            "empty": stats["empty"],
            "backlog": stats["backlog"],
            "p50_ratio": ratio(stats["backlog"]["p50_ms"], stats["empty"]["p50_ms"]),
            "p95_ratio": p95_ratio,
            "max_ratio": ratio(stats["backlog"]["max_ms"], stats["empty"]["max_ms"]),
            "target_met": p95_ratio <= LATENCY_TARGET,
            "backlog_alone_per_second": statistics.median(alone),
            "backlog_alone_runs": alone,
            "spread_per_second": statistics.median(spread),
            "spread_runs": spread,
            "alone_vs_spread": ratio(statistics.median(alone), statistics.median(spread)),
            "backlog_meanwhile_per_second": statistics.median(
                r.meanwhile_per_second or 0.0 for r in mine["backlog"]
            ),
            "backlog_left_min": min(r.backlog_left or 0 for r in mine["backlog"]),
            "ahead_median": statistics.median(x for r in mine["backlog"] for x in r.ahead),
            "ahead_max": max(x for r in mine["backlog"] for x in r.ahead),
        }
    return out


def _latency_stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "batches": len(values),
        "p50_ms": percentile(values, 50) * 1e3,
        "p95_ms": percentile(values, 95) * 1e3,
        "max_ms": max(values) * 1e3,
    }


# -- claims at 100,000 pending items ----------------------------------------------------


# The `chosen` CTE of claim_generations (supabase/migrations/20261202000600_lean_queue.sql),
# run on its own: what a claim reads to find its items.
INNER_SELECT = """
select q.id from private.generation_queue q
  join public.generations g on g.id = q.id
 where q.status = 'pending' and q.run_after <= now() and g.status = 'pending'
 order by q.fair_tag, q.queued_at, q.batch_id, q.position
 limit %s
   for update of g skip locked
"""


@dataclass(frozen=True)
class Call:
    """What is timed on each queue: who runs it (service, user, superuser), the
    statement, its parameters, and settings for its transaction."""

    label: str
    role: str
    query: str
    params: tuple[Any, ...] = ()
    settings: tuple[str, ...] = ()


CLAIM = "select id from public.claim_generations(worker_id => %s, max_items => %s)"
CLAIM_PARAMS = ("bench-claimer", CLAIM_ITEMS)
CALLS = {
    "claim": Call(f"claim_generations(max_items => {CLAIM_ITEMS})", "service", CLAIM, CLAIM_PARAMS),
    "claim-generic": Call(
        "  the same, plan_cache_mode = force_generic_plan",
        "service",
        CLAIM,
        CLAIM_PARAMS,
        ("plan_cache_mode = force_generic_plan",),
    ),
    "claim-custom": Call(
        "  the same, plan_cache_mode = force_custom_plan",
        "service",
        CLAIM,
        CLAIM_PARAMS,
        ("plan_cache_mode = force_custom_plan",),
    ),
    "select": Call(
        "its inner select alone (fair-queue index)", "superuser", INNER_SELECT, (CLAIM_ITEMS,)
    ),
    "sorted": Call(
        "  the same, index scans off: a Sort (contrast)",
        "superuser",
        INNER_SELECT,
        (CLAIM_ITEMS,),
        ("enable_indexscan = off", "enable_indexonlyscan = off", "enable_bitmapscan = off"),
    ),
    "create": Call(
        f"create a {SMALL_BATCH}-item batch (fair tag trigger)",
        "user",
        "select public.create_generation_batch(style_keys => %s, source_image_path => %s)",
    ),
}


# The tables a rolled-back claim or batch leaves row versions in.
TIDIED = ("public.generations", "public.generation_batches", "private.generation_queue")


class ClaimQueue:
    """A database whose queue holds `users` x ITEMS_PER_USER pending items, and a session
    on it that claims and creates batches in transactions it rolls back."""

    def __init__(self, url: str, users: int) -> None:
        self.pending = users * ITEMS_PER_USER
        with open_connection(url) as conn:
            ids = make_users(conn, users, credits=CREDITS, label="queue")
            load_batches(conn, {u: 1 for u in ids}, ITEMS_PER_USER, mix={"pending": 100})
            conn.commit()
        self.admin = open_connection(url, autocommit=True)
        for table in TIDIED:
            # Vacuumed by tidy() on both queues alike, not by autovacuum when it likes.
            self.admin.execute(f"alter table {table} set (autovacuum_enabled = false)")
        self.tidy(analyze=True)
        self.admin.execute("checkpoint")
        self.conn = open_connection(url)
        self.cpu = BackendCpu(self.conn)
        self.user = ids[0]
        self.styles = [
            r[0]
            for r in self.conn.execute(
                "select key from public.styles where is_active order by key limit %s",
                (SMALL_BATCH,),
            )
        ]
        self.conn.rollback()
        self.samples: dict[str, list[tuple[float, float]]] = {what: [] for what in CALLS}

    def tidy(self, *, analyze: bool = False) -> None:
        """Vacuum away the row versions the rolled-back calls left."""
        for table in TIDIED:
            self.admin.execute(f"vacuum {'analyze' if analyze else ''} {table}")

    def sample(self, what: str, keep: bool) -> None:
        """One call, timed (wall, backend CPU), in a transaction rolled back after."""
        call = CALLS[what]
        params = call.params
        if call.role == "user":
            params = (self.styles, f"{self.user}/bench/source.png")
        with self.conn.transaction(force_rollback=True):
            for setting in call.settings:
                self.conn.execute(f"set local {setting}")
            if call.role != "superuser":
                as_claims(
                    self.conn, SERVICE_CLAIMS if call.role == "service" else user_claims(self.user)
                )
            cpu, start = self.cpu.seconds(), time.perf_counter()
            rows = self.conn.execute(call.query, params).fetchall()
            wall, cpu = time.perf_counter() - start, self.cpu.seconds() - cpu
        if call.role != "user" and len(rows) != CLAIM_ITEMS:
            raise RuntimeError(f"{what}: {len(rows)} items, not {CLAIM_ITEMS}")
        if keep:
            self.samples[what].append((wall, cpu))

    def claim_plan(self) -> tuple[str, list[str]]:
        """The plan of the claim's inner select (CTE `chosen`) as claim_generations runs it,
        from auto_explain (nested statements, ANALYZE, BUFFERS) sent back as a NOTICE; on a
        server without auto_explain, EXPLAIN of INNER_SELECT. (Where it came from, lines.)"""
        notices: list[str] = []
        self.conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        try:
            self.conn.execute("load 'auto_explain'")
        except psycopg.Error:
            self.conn.rollback()
            with self.conn.transaction(force_rollback=True):
                rows = self.conn.execute(
                    "explain (analyze, buffers, costs off) " + INNER_SELECT, (CLAIM_ITEMS,)
                ).fetchall()
            return "EXPLAIN of INNER_SELECT (no auto_explain)", [r[0] for r in rows]
        for setting in (
            "log_min_duration = 0",
            "log_nested_statements = on",
            "log_analyze = on",
            "log_buffers = on",
            "log_timing = off",
            "log_level = notice",
        ):
            self.conn.execute(f"set local auto_explain.{setting}")
        as_claims(self.conn, SERVICE_CLAIMS)
        self.conn.execute(CLAIM, CLAIM_PARAMS).fetchall()
        self.conn.rollback()
        statement = next((n for n in notices if "CTE chosen" in n), "")
        return "auto_explain of the last call", cte_subtree(statement.splitlines(), "CTE chosen")

    def close(self) -> None:
        self.conn.close()
        self.admin.close()


def cte_subtree(lines: list[str], name: str) -> list[str]:
    """The lines of a text plan from `name` down to the next node no deeper than it."""
    for n, line in enumerate(lines):
        if line.strip() == name:
            depth = len(line) - len(line.lstrip())
            rest = []
            for below in lines[n + 1 :]:
                if len(below) - len(below.lstrip()) <= depth:
                    break
                rest.append(below[depth:])
            return [line[depth:], *rest]
    return []


def index_driven(plan: list[str]) -> bool:
    """The fair-queue index read in order, and nothing sorted to find the first items."""
    return any("generation_queue_fair_idx" in line for line in plan) and not any(
        line.strip().startswith(("-> Sort", "->  Sort", "Sort ")) or "Sort Key" in line
        for line in plan
    )


def measure_claims(server_url: str, args: Any) -> dict[str, Any]:
    sizes = (args.pending // ITEMS_PER_USER, BASELINE_PENDING // ITEMS_PER_USER)
    with (
        scratch_database(server_url, "claims_large") as large_url,
        scratch_database(server_url, "claims_small") as small_url,
    ):
        log.print(f"[dim]loading {args.pending:,} and {BASELINE_PENDING:,} pending items[/]")
        queues = [ClaimQueue(large_url, sizes[0]), ClaimQueue(small_url, sizes[1])]
        try:
            for n in range(WARMUP + args.samples):
                for queue in random.sample(queues, len(queues)):
                    for what in random.sample(list(CALLS), len(CALLS)):
                        queue.sample(what, keep=n >= WARMUP)
                    if n % TIDY_EVERY == TIDY_EVERY - 1:
                        queue.tidy()
            plans = [queue.claim_plan() for queue in queues]
        finally:
            for queue in queues:
                queue.close()
    out: dict[str, Any] = {"pending": [q.pending for q in queues], "calls": {}, "plans": {}}
    for what in CALLS:
        large, small = (_call_stats(q.samples[what]) for q in queues)
        out["calls"][what] = {
            "large": large,
            "small": small,
            "median_ratio": ratio(large["median_ms"], small["median_ms"]),
            "cpu_ratio": ratio(large["cpu_median_ms"], small["cpu_median_ms"]),
        }
    for queue, (source, plan) in zip(queues, plans, strict=True):
        out["plans"][queue.pending] = {
            "source": source,
            "lines": plan,
            "index_driven": index_driven(plan),
        }
    claim = out["calls"]["claim"]
    out["target_met"] = claim["cpu_ratio"] <= CLAIM_TARGET and all(
        p["index_driven"] for p in out["plans"].values()
    )
    return out


def _call_stats(samples: list[tuple[float, float]]) -> dict[str, Any]:
    walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
    return {
        "samples": len(samples),
        "median_ms": statistics.median(walls) * 1e3,
        "p95_ms": percentile(walls, 95) * 1e3,
        "cpu_median_ms": statistics.median(cpus) * 1e3,
    }


# -- the report -------------------------------------------------------------------------


def render_latency(results: dict[str, Any], facts: dict[str, Any], args: Any) -> list[Table]:
    latency = Table(
        title=f"{SMALL_USERS} users' {SMALL_BATCH}-item batches behind one user's "
        f"{args.backlog:,}-item backlog: creation to completion",
        caption=f"One worker process{'es' if args.processes > 1 else ''} "
        f"({args.processes} x concurrency {args.concurrency}); the small batches are created "
        + (f"one every {args.spacing * 1e3:g} ms" if args.spacing else "one after another")
        + f" once {ALONE_SHARE:.0%} of the backlog is done. Latency: generation_batches."
        f"finished_at - created_at (server time), all batches of {args.rounds} round(s). "
        f"Baseline: the same batches with an empty queue. Target: p95 ≤ {LATENCY_TARGET}x the "
        "baseline. Claimed ahead: backlog items claimed after a small batch was created and "
        "before its last item was (arrival order would put thousands ahead). Left: backlog "
        "items not yet done when the last small batch finished (fewest in any round; 0 would "
        "mean the backlog ran out too soon). "
        f"PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs.",
    )
    for name in (
        "generator",
        "queue",
        "batches",
        "p50",
        "p95",
        "max",
        "p50 vs\nempty",
        "p95 vs\nempty",
        "backlog claimed\nahead: median/max",
        "backlog items/s\nmeanwhile",
        "backlog\nleft",
    ):
        latency.add_column(name, justify="left" if name in ("generator", "queue") else "right")
    throughput = Table(
        title="The backlog alone: items per second until the small batches arrive",
        caption=f"The first {ALONE_SHARE:.0%} of {args.backlog:,} pending items, from the go "
        f"signal to the last completion before the first small batch (server time). Baseline: "
        f"the same items spread over {SPREAD_USERS} users. Median over rounds.",
    )
    for name in (
        "generator",
        f"one user's {args.backlog:,}",
        f"spread over {SPREAD_USERS} users (baseline)",
        "ratio",
        "each round (one user)",
    ):
        throughput.add_column(name, justify="left" if name == "generator" else "right")
    for r in results.values():
        for n, key in enumerate(("empty", "backlog")):
            s = r[key]
            latency.add_row(
                r["label"] if n == 0 else "",
                "empty (baseline)" if key == "empty" else f"{args.backlog:,} of one user",
                str(s["batches"]),
                *(f"{s[k]:,.0f} ms" for k in ("p50_ms", "p95_ms", "max_ms")),
                "1.00" if key == "empty" else f"{r['p50_ratio']:.2f}",
                "1.00" if key == "empty" else f"{r['p95_ratio']:.2f} {verdict(r['target_met'])}",
                "" if key == "empty" else f"{r['ahead_median']:,.0f} / {r['ahead_max']:,}",
                "" if key == "empty" else f"{r['backlog_meanwhile_per_second']:,.0f}",
                "" if key == "empty" else f"{r['backlog_left_min']:,}",
                end_section=key == "backlog",
            )
        throughput.add_row(
            r["label"],
            f"{r['backlog_alone_per_second']:,.0f}",
            f"{r['spread_per_second']:,.0f}",
            f"{r['alone_vs_spread']:.2f}",
            " ".join(f"{x:,.0f}" for x in r["backlog_alone_runs"]),
        )
    return [latency, throughput]


def render_claims(results: dict[str, Any], facts: dict[str, Any]) -> list[Table]:
    large, small = results["pending"]
    table = Table(
        title=f"Claims with {large:,} pending items of {large // ITEMS_PER_USER:,} users",
        caption=f"Each call in a transaction rolled back after: the claim and the batch as "
        f"PostgREST runs them (role + claims), the select as the superuser; "
        f"{results['calls']['claim']['large']['samples']} samples each, sizes and calls "
        f"interleaved. Server CPU: the backend's own (/proc/<pid>/schedstat). Baseline: "
        f"{small:,} pending items of {small // ITEMS_PER_USER} users. plan_cache_mode: the "
        f"claim's statement planned once (generic) or on every call (custom), where PL/pgSQL "
        f"would choose. Target: a claim's server CPU ≤ {CLAIM_TARGET}x the baseline, and its "
        f"plan index-driven (below). "
        f"PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs.",
    )
    for name in (
        "call",
        f"{small:,} pending\nmedian / p95",
        "server CPU",
        f"{large:,} pending\nmedian / p95",
        "server CPU",
        "median\nratio",
        "server CPU\nratio",
    ):
        table.add_column(name, justify="left" if name == "call" else "right")
    for what, r in results["calls"].items():
        cpu = f"{r['cpu_ratio']:.2f}"
        if what == "claim":
            cpu += f" {verdict(results['target_met'])}"
        table.add_row(
            CALLS[what].label,
            f"{r['small']['median_ms']:.2f} / {r['small']['p95_ms']:.2f} ms",
            f"{r['small']['cpu_median_ms']:.2f} ms",
            f"{r['large']['median_ms']:.2f} / {r['large']['p95_ms']:.2f} ms",
            f"{r['large']['cpu_median_ms']:.2f} ms",
            f"{r['median_ratio']:.2f}",
            cpu,
        )
    tables = [table]
    for pending, plan in results["plans"].items():
        shown = Table(
            title=f"The claim's inner select as claim_generations runs it, {pending:,} pending",
            caption=f"{plan['source']} (ANALYZE, BUFFERS). Index-driven (the fair-queue "
            f"index in order, no Sort): {verdict(plan['index_driven'])}",
            show_header=False,
        )
        shown.add_column("plan", no_wrap=True)
        for line in plan["lines"] or ["(no plan)"]:
            shown.add_row(line)
        tables.append(shown)
    return tables


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", help="latency or claims (default: both)")
    p.add_argument("--rounds", type=int, help="latency rounds (default 3; 1 with --quick)")
    p.add_argument("--backlog", type=int, help="the one user's items (default 10,000)")
    p.add_argument("--concurrency", type=int, default=64, help="worker slots (default 64)")
    p.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--spacing-ms",
        type=float,
        default=0.0,
        help="pause between two small batches' creation (default 0: a burst)",
    )
    p.add_argument("--pending", type=int, help="pending items for claims (default 100,000)")
    p.add_argument("--samples", type=int, help="claims per size (default 200; 60 with --quick)")
    args = p.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.backlog = args.backlog or (4_000 if args.quick else 10_000)
    args.pending = args.pending or 100_000
    args.samples = args.samples or (60 if args.quick else 200)
    args.spacing = args.spacing_ms / 1e3
    parts = set((args.only or "latency,claims").split(","))
    tables: list[Table] = []
    results: dict[str, Any] = {}
    with bench_server(args.database_url, "fairness") as server_url:
        with open_connection(server_url, autocommit=True) as admin:
            facts = server_facts(admin)
        if "latency" in parts:
            results["latency"] = latency_results(measure_latency(server_url, args), args)
            tables += render_latency(results["latency"], facts, args)
        if "claims" in parts:
            results["claims"] = measure_claims(server_url, args)
            tables += render_claims(results["claims"], facts)
    results["server"] = facts
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("json",)}
    emit(args, tables, results)


if __name__ == "__main__":
    main()
