"""How many batches per second create_generation_batch takes, against plain INSERTs.

Each worker is its own process with its own connection and its own user (so the lock on
the user's profile is never what they wait for), creating batches of 10 styles as fast
as it can, one transaction per call:

- `create_generation_batch` through the RPC path: role + claims, the call, COMMIT, as
  PostgREST runs it (validation, profile lock, debit and ledger row, the batch, its
  items, the counters trigger, the queue's NOTIFY);
- the ceiling: the same rows written as plain INSERTs by the superuser (1 batch row with
  its counters + 10 generation rows, one transaction per batch) with the triggers on
  generations disabled.

At 1, 4 and 16 concurrent workers, in interleaved rounds, with durable commits (the
server's default). Target: the function reaches at least half of the ceiling.

    .venv/bin/python benchmarks/create_batch.py [--quick] [--json]
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from _common import (
    BackendCpu,
    Connection,
    bench_database,
    emit,
    log,
    make_users,
    open_connection,
    parser,
    percentile,
    ratio,
    server_facts,
    user_claims,
    user_triggers_disabled,
    verdict,
)
from rich.table import Table

from portraitkit.database import rpc

CONCURRENCY = (1, 4, 16)
MODES = ("function", "ceiling")
MODE_LABELS = {
    "function": "create_generation_batch (RPC)",
    "ceiling": "plain INSERTs, triggers off (ceiling)",
}
STYLES_PER_BATCH = 10
TARGET_SHARE = 0.5
START_DELAY = 0.3  # seconds for every worker to be ready before the window opens


# -- the workers ------------------------------------------------------------------------


def create_with_function(conn: Connection, user: uuid.UUID, styles: list[str], n: int) -> None:
    rpc.call(
        conn,
        "create_generation_batch",
        {"style_keys": styles, "source_image_path": f"{user}/bench/{n}.png"},
        claims=user_claims(user),
    )


def create_with_inserts(
    conn: Connection, user: uuid.UUID, styles: list[str], n: int, cost: int
) -> None:
    with conn.transaction():
        (batch_id,) = conn.execute(
            "insert into public.generation_batches"
            " (user_id, original_image_url, credits_charged, total_count, pending_count)"
            " values (%s, %s, %s, %s, %s) returning id",
            (user, f"{user}/bench/{n}.png", cost, len(styles), len(styles)),
        ).fetchone()
        conn.execute(
            "insert into public.generations"
            " (user_id, batch_id, style_key, position, credit_cost, max_attempts)"
            " select %s, %s, s.key, k.ord, s.credit_cost, 3"
            "   from unnest(%s::text[]) with ordinality as k(key, ord)"
            "   join public.styles s on s.key = k.key",
            (user, batch_id, styles),
        )


def worker(
    url: str,
    user: uuid.UUID,
    styles: list[str],
    cost: int,
    commands: mp.Queue[Any],
    results: mp.Queue[Any],
) -> None:
    """Run windows on command: ("function"|"ceiling", start_at, stop_at); None to stop."""
    conn = open_connection(url)
    cpu = BackendCpu(conn)
    n = 0
    while (command := commands.get()) is not None:
        mode, start_at, stop_at = command
        latencies = []
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before = cpu.seconds()
        while time.monotonic() < stop_at:
            n += 1
            started = time.perf_counter()
            if mode != "ceiling":
                create_with_function(conn, user, styles, n)
            else:
                create_with_inserts(conn, user, styles, n, cost)
            latencies.append(time.perf_counter() - started)
        results.put((latencies, time.monotonic(), cpu.seconds() - cpu_before, cpu.available))
    conn.close()


# -- the runs ---------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    concurrency: int
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float | None = 0.0  # seconds on a CPU of the workers' backends; None: unknown

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def window(
    workers: list[tuple[mp.Queue[Any], Any]],
    results: mp.Queue[Any],
    mode: str,
    concurrency: int,
    seconds: float,
    run: Run,
) -> None:
    """One timed window: the first `concurrency` workers create batches for `seconds`."""
    start_at = time.monotonic() + START_DELAY
    stop_at = start_at + seconds
    for commands, _process in workers[:concurrency]:
        commands.put((mode, start_at, stop_at))
    ends = []
    for _ in range(concurrency):
        try:
            latencies, ended, cpu, cpu_known = results.get(timeout=seconds + 60)
        except queue.Empty:
            raise RuntimeError("a worker stopped answering") from None
        run.server_cpu = run.server_cpu + cpu if cpu_known and run.server_cpu is not None else None
        run.latencies += latencies
        run.calls += len(latencies)
        ends.append(ended)
    run.seconds += max(ends) - start_at


def measure(url: str, seconds: float, rounds: int) -> list[Run]:
    with open_connection(url, autocommit=True) as admin:
        users = make_users(admin, max(CONCURRENCY), credits=1_000_000_000, label="creator")
        rows = admin.execute(
            "select key, credit_cost from public.styles where is_active order by key limit %s",
            (STYLES_PER_BATCH,),
        ).fetchall()
        styles, cost = [r[0] for r in rows], sum(r[1] for r in rows)
        context = mp.get_context("spawn")  # no inherited connections in the workers
        results: mp.Queue[Any] = context.Queue()
        workers = []
        for user in users:
            commands: mp.Queue[Any] = context.Queue()
            process = context.Process(
                target=worker, args=(url, user, styles, cost, commands, results), daemon=True
            )
            process.start()
            workers.append((commands, process))
        runs = {(m, c): Run(m, c) for m in MODES for c in CONCURRENCY}
        try:
            # A short unmeasured window per mode warms every worker's connection and plans.
            for mode in MODES:
                with triggers_for(admin, mode):
                    window(workers, results, mode, max(CONCURRENCY), 0.5, Run(mode, 0))
            for round_no in range(rounds):
                log.print(f"[dim]round {round_no + 1}/{rounds}[/]")
                for concurrency in CONCURRENCY:
                    for mode in MODES:
                        with triggers_for(admin, mode):
                            run = runs[(mode, concurrency)]
                            window(workers, results, mode, concurrency, seconds, run)
        finally:
            for commands, _process in workers:
                commands.put(None)
            for _commands, process in workers:
                process.join(timeout=30)
        check_batches(admin, sum(r.calls for r in runs.values()))
    return list(runs.values())


@contextmanager
def triggers_for(admin: Connection, mode: str) -> Iterator[None]:
    """The ceiling runs with the user triggers on generations off; the function with them."""
    if mode != "ceiling":
        yield
        return
    with user_triggers_disabled(admin):
        yield


def check_batches(admin: Connection, measured_calls: int) -> None:
    """Every call made one batch of 10 pending items, and every debit is in the ledger."""
    batches, wrong = admin.execute(
        "select count(*), count(*) filter (where (total_count, pending_count) <> (10, 10))"
        "  from public.generation_batches"
    ).fetchone()
    if wrong or batches < measured_calls:
        raise RuntimeError(f"{batches} batches for {measured_calls}+ calls, {wrong} miscounted")
    unexplained = admin.execute(
        "select count(*) from public.profiles p"
        " where p.starting_credits + coalesce((select sum(l.delta) from public.credit_ledger l"
        "                                       where l.user_id = p.id), 0) <> p.total_credits"
    ).fetchone()[0]
    if unexplained:
        raise RuntimeError(f"{unexplained} balances are not explained by the ledger")


# -- the report -------------------------------------------------------------------------


def results_of(runs: list[Run]) -> dict[str, Any]:
    by = {(r.mode, r.concurrency): r for r in runs}
    out: dict[str, Any] = {"concurrency": {}}
    for c in CONCURRENCY:
        entry: dict[str, Any] = {}
        for mode in MODES:
            r = by[(mode, c)]
            entry[mode] = {
                "calls": r.calls,
                "seconds": r.seconds,
                "per_second": r.per_second,
                "median_ms": percentile(r.latencies, 50) * 1e3,
                "p95_ms": percentile(r.latencies, 95) * 1e3,
                "server_cpu_ms_per_batch": (
                    r.server_cpu / r.calls * 1e3 if r.server_cpu is not None else None
                ),
            }
        entry["share_of_ceiling"] = ratio(
            by[("function", c)].per_second, by[("ceiling", c)].per_second
        )
        entry["target_met"] = entry["share_of_ceiling"] >= TARGET_SHARE
        out["concurrency"][c] = entry
    return out


def render(results: dict[str, Any], facts: dict[str, Any], seconds: float, rounds: int) -> Table:
    table = Table(
        title=f"Creating batches of {STYLES_PER_BATCH} styles: calls per second",
        caption=f"{rounds} x {seconds:g} s windows per cell, interleaved; each worker a process "
        "with its own connection and user, one transaction per batch; server CPU = the "
        "backends' CPU time per batch (steady on a busy machine). Baseline (ceiling): "
        "the same rows as plain INSERTs with the generations triggers off. "
        f"Target: ≥ {TARGET_SHARE:.0%} of the ceiling. PostgreSQL {facts['postgres']}, "
        f"{facts['cpus']} CPUs, synchronous_commit={facts['synchronous_commit']}.",
    )
    table.add_column("workers", justify="right")
    table.add_column("path")
    table.add_column("batches", justify="right")
    table.add_column("batches/s", justify="right")
    table.add_column("latency median", justify="right")
    table.add_column("latency p95", justify="right")
    table.add_column("server CPU\nper batch", justify="right")
    table.add_column("share of ceiling\n(batches/s)", justify="right")
    for c, entry in results["concurrency"].items():
        for n, mode in enumerate(("ceiling", "function")):
            r = entry[mode]
            share = (
                f"{entry['share_of_ceiling']:.2f} {verdict(entry['target_met'])}"
                if mode == "function"
                else "1.00"
            )
            table.add_row(
                str(c) if n == 0 else "",
                MODE_LABELS[mode],
                f"{r['calls']:,}",
                f"{r['per_second']:.0f}",
                f"{r['median_ms']:.2f} ms",
                f"{r['p95_ms']:.2f} ms",
                "-"
                if r["server_cpu_ms_per_batch"] is None
                else f"{r['server_cpu_ms_per_batch']:.2f} ms",
                share,
                end_section=n == 1,
            )
    return table


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    seconds, rounds = (1.5, 1) if args.quick else (3.0, 3)
    with bench_database(args.database_url, "create") as url:
        with open_connection(url, autocommit=True) as admin:
            facts = server_facts(admin)
        runs = measure(url, seconds, rounds)
    results = results_of(runs)
    results["server"] = facts
    results["window_seconds"], results["rounds"] = seconds, rounds
    emit(args, [render(results, facts, seconds, rounds)], results)


if __name__ == "__main__":
    main()
