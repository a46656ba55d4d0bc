"""Items per second through claim -> no-op generator -> complete, against other queues.

The same number of no-op jobs, loaded before the clock starts, drained by 1, 2 and 4
worker processes of:

- portraitkit's worker (`portraitkit.worker.Worker`, wired as `service.open_worker` wires
  it: service-role RPCs over a pool of 4, the LISTEN feed, the noop generator, a storage
  that stores nothing, no per-user limit). Trigger, counters, batch NOTIFYs and the
  PostgREST-style RPC path (role + claims per transaction) all included;
- procrastinate: its worker with concurrency, a connection per job slot;
- pgqueuer: its QueueManager over asyncpg on uvloop, as `pgq run` runs it, at a few
  `batch_size`s; its best for each process count is the baseline (1.00);
- two ceilings on a plain table, one connection per process: a bare claim
  (`UPDATE ... FOR UPDATE SKIP LOCKED`) and complete per item, each its own transaction;
  and the same 20 items at a time.

One PostgreSQL for all, with durable commits (the server's default). Every run gets a
fresh database, a copy of a template holding that system's schema (installed by the
system's own installer); its queue is loaded in bulk, vacuumed, analysed and checkpointed;
then its processes connect and wait, and the clock runs from the go signal to the last
job's completion as the system itself records it (server time). The fast configurations
run in every round and the slow ones (procrastinate, the per-item ceiling) in the first,
with the order rotated between rounds so drift on a shared machine hits all alike.
Figures are medians over rounds.

    .venv/bin/python benchmarks/worker_throughput.py [--quick] [--json] [--database-url URL]
        [--items N] [--rounds N] [--only KEY,...]
        [--candidate [PATH.py:Class][+uvloop][+sql=FILE] ...] [--profile PREFIX]
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _common import (
    Connection,
    ServerCpu,
    bench_server,
    emit,
    log,
    open_connection,
    parser,
    ratio,
    scratch_database,
    server_facts,
    verdict,
)
from _queue_runners import serve
from _queue_systems import SYSTEMS, System, as_uri, templates
from rich.table import Table

PROCESSES = (1, 2, 4)
PORTRAITKIT_CONCURRENCY = 400
PROCRASTINATE_CONCURRENCY = 10
PGQUEUER_BATCH_SIZES = (100, 250, 500)
CEILING_BATCH = 20
RUN_TIMEOUT = 300.0
# How often the parent looks for the end; the figures come from the systems' own
# timestamps, so this only decides how soon a run is wound up.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Config:
    """One line of the comparison: a system with its settings."""

    key: str
    system: str
    label: str
    settings: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    slow: bool = False  # measured in the first round only
    setup_sql: str = ""  # run on the loaded database before the clock starts


def portraitkit_settings(**extra: Any) -> dict[str, Any]:
    return {
        "options": {
            "concurrency": PORTRAITKIT_CONCURRENCY,
            "generator": "noop",
        },
        **extra,
    }


def configs(candidates: list[str] | None = None) -> list[Config]:
    candidates = candidates or []
    chosen = [
        Config(
            "ceiling-1", "ceiling", "ceiling: claim + complete each item", {"batch": 1}, slow=True
        ),
        Config(
            f"ceiling-{CEILING_BATCH}",
            "ceiling",
            f"ceiling: claim + complete {CEILING_BATCH} at a time",
            {"batch": CEILING_BATCH},
        ),
        Config(
            "procrastinate",
            "procrastinate",
            f"procrastinate (concurrency {PROCRASTINATE_CONCURRENCY})",
            {"concurrency": PROCRASTINATE_CONCURRENCY},
            slow=True,
        ),
        *[
            Config(f"pgqueuer-{b}", "pgqueuer", f"pgqueuer (batch_size {b})", {"batch_size": b})
            for b in PGQUEUER_BATCH_SIZES
        ],
        Config(
            "portraitkit",
            "portraitkit",
            f"portraitkit worker (concurrency {PORTRAITKIT_CONCURRENCY})",
            portraitkit_settings(),
        ),
    ]
    for n, spec in enumerate(candidates, start=1):
        chosen.append(candidate_config(f"candidate-{n}", spec))
    return chosen


def installed(system: str) -> bool:
    """procrastinate and pgqueuer come with the bench extra; a missing one is left out."""
    return system not in ("procrastinate", "pgqueuer") or bool(importlib.util.find_spec(system))


def candidate_config(key: str, spec: str) -> Config:
    """A proposed change beside the current worker: `[PATH.py:Class][+uvloop][+sql=FILE]`,
    a Worker class to load instead of portraitkit's, its event loop, and SQL to run on the
    loaded database before the clock starts (a proposed migration)."""
    reference, *flags = spec.split("+")
    sql_files = [f.removeprefix("sql=") for f in flags if f.startswith("sql=")]
    settings = portraitkit_settings(uvloop="uvloop" in flags)
    if reference:
        settings["worker_class"] = reference
    label = " + ".join(
        [Path(reference.split(":")[0]).name if reference else "current worker"]
        + (["uvloop"] if "uvloop" in flags else [])
        + [Path(f).name for f in sql_files]
    )
    return Config(
        key,
        "portraitkit",
        f"candidate: {label}",
        settings,
        setup_sql="\n".join(Path(f).read_text() for f in sql_files),
    )


# -- one run ----------------------------------------------------------------------------


@dataclass
class Run:
    config: str
    processes: int
    items: int
    seconds: float
    server_cpu: float | None  # seconds, all server processes
    client_cpu: float  # seconds, the worker processes
    other_load: float | None  # cores busy with anything else on the machine meanwhile
    wal_bytes: float

    @property
    def per_second(self) -> float:
        return self.items / self.seconds


def run_once(
    context: Any,
    server_url: str,
    template: dict[str, str],
    config: Config,
    processes: int,
    items: int,
    profile: str | None = None,
) -> Run:
    system = SYSTEMS[config.system]
    with scratch_database(server_url, config.system, template=template[config.system]) as url:
        system.load(url, items)
        with open_connection(url, autocommit=True) as conn:
            if config.setup_sql:
                conn.execute(config.setup_sql)
            for table in system.tables:
                conn.execute(f"vacuum analyze {table}")
            conn.execute("checkpoint")
            settings = {**config.settings, **({"profile": profile} if profile else {})}
            ready = context.Queue()
            go = context.Event()
            workers = [
                context.Process(
                    target=serve,
                    daemon=True,
                    args=(config.system, as_uri(url), settings, ready, go),
                )
                for _ in range(processes)
            ]
            for worker in workers:
                worker.start()
            try:
                clients = [psutil.Process(ready.get(timeout=120)) for _ in workers]
                run = _timed(conn, system, config, clients, go, items, workers)
            finally:
                _stop(workers)
            system.check(conn, items)
    return run


def _timed(
    conn: Connection,
    system: System,
    config: Config,
    clients: list[psutil.Process],
    go: Any,
    items: int,
    workers: list[Any],
) -> Run:
    """Open the window, wait for the last job, read what it cost."""
    server = ServerCpu(conn)
    window = time.monotonic()
    machine_before, client_before = _machine_busy(), sum(_cpu(c) for c in clients)
    server_before = server.snapshot()
    started, wal_before = conn.execute("select clock_timestamp(), pg_current_wal_lsn()").fetchone()
    go.set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while (conn.execute(system.done_sql).fetchone()[0] or 0) < items:
        if time.monotonic() > deadline or not any(w.is_alive() for w in workers):
            raise RuntimeError(
                f"{config.key}: not done after {RUN_TIMEOUT:.0f} s, or its workers died"
            )
        time.sleep(POLL_SECONDS)
    (last,) = conn.execute(system.last_sql).fetchone()
    (wal,) = conn.execute(
        "select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_before,)
    ).fetchone()
    server_cpu = ServerCpu.between(server_before, server.snapshot()) if server.available else None
    client_cpu = sum(_cpu(c) for c in clients) - client_before
    machine = _machine_busy() - machine_before
    window = time.monotonic() - window
    # Cores busy with anything but this run, on average over the window.
    others = (machine - client_cpu - server_cpu) / window if server_cpu is not None else None
    return Run(
        config.key,
        len(clients),
        items,
        (last - started).total_seconds(),
        server_cpu,
        client_cpu,
        others,
        float(wal),
    )


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _machine_busy() -> float:
    """CPU seconds every process on this machine has used so far (all cores)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _stop(workers: list[Any]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: each stops the way its own runner stops it
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
            worker.join()


# -- the whole comparison ---------------------------------------------------------------


def measure(server_url: str, items: int, rounds: int, chosen: list[Config]) -> list[Run]:
    # Worker processes fork from a server process that has imported everything once: a
    # clean interpreter per worker (no inherited connections) without paying for imports.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(
        [
            "_queue_runners",
            "portraitkit.worker",
            "portraitkit.transports.postgres",
            "procrastinate",
            "pgqueuer",
            "asyncpg",
            "uvloop",
        ]
    )
    runs: list[Run] = []
    with templates(server_url, {c.system for c in chosen}) as template:
        for round_no in range(rounds):
            todo = [c for c in chosen if round_no == 0 or not c.slow]
            for processes in PROCESSES:
                shift = (round_no * len(PROCESSES) + processes) % len(todo)
                for config in todo[shift:] + todo[:shift]:
                    run = run_once(context, server_url, template, config, processes, items)
                    log.print(
                        f"[dim]round {round_no + 1}/{rounds}  {processes} process(es)  "
                        f"{config.key:<14} {run.per_second:8,.0f}/s[/]"
                    )
                    runs.append(run)
    return runs


# -- the report -------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def results_of(runs: list[Run], chosen: list[Config]) -> dict[str, Any]:
    out: dict[str, Any] = {"processes": {}}
    for p in PROCESSES:
        entry: dict[str, Any] = {}
        for config in chosen:
            mine = [r for r in runs if r.config == config.key and r.processes == p]
            if not mine:
                continue
            server = [r.server_cpu / r.items * 1e6 for r in mine if r.server_cpu is not None]
            others = [r.other_load for r in mine if r.other_load is not None]
            entry[config.key] = {
                "label": config.label,
                "items": mine[0].items,
                "per_second": statistics.median(r.per_second for r in mine),
                "per_second_runs": [r.per_second for r in mine],
                "server_cpu_us_per_item": _median(server),
                "client_cpu_us_per_item": statistics.median(
                    r.client_cpu / r.items * 1e6 for r in mine
                ),
                "wal_bytes_per_item": statistics.median(r.wal_bytes / r.items for r in mine),
                "other_load_cores": _median(others),
            }
        pgq = [k for k in entry if k.startswith("pgqueuer-")]
        best = max(pgq, key=lambda k: entry[k]["per_second"]) if pgq else None
        base = entry[best]["per_second"] if best else float("nan")
        base_cpu = (entry[best]["server_cpu_us_per_item"] if best else None) or float("nan")
        for value in entry.values():
            value["vs_pgqueuer_best"] = ratio(value["per_second"], base)
            cpu = value["server_cpu_us_per_item"]
            value["server_cpu_vs_pgqueuer_best"] = None if cpu is None else ratio(cpu, base_cpu)
        out["processes"][p] = {
            "pgqueuer_best": best,
            "target_met": (
                entry["portraitkit"]["per_second"] >= base
                if best and "portraitkit" in entry
                else None
            ),
            "systems": entry,
        }
    return out


def render(results: dict[str, Any], facts: dict[str, Any], items: int, rounds: int) -> Table:
    table = Table(
        title=f"Draining {items:,} pre-loaded no-op jobs: items per second",
        caption=f"Median over {rounds} round(s) (slow lines: first round only); each worker "
        "a process; clock from the go signal to the last completion, in server time. "
        "Baseline: pgqueuer at its best batch_size for that process count (1.00). Server "
        "CPU: CPU time of every process of the PostgreSQL server (the postmaster and its "
        "children: backends, WAL writer, checkpointer, autovacuum; the benchmark's own "
        "backend left out) from /proc/<pid>/schedstat over the run, per item, and its ratio "
        "to pgqueuer's best (lower is cheaper); client: the worker processes (psutil); WAL: "
        "bytes written per item; other load: cores busy with other work on this machine "
        "during the run (a shared machine). Target: portraitkit ≥ pgqueuer's best. "
        f"PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs, "
        f"synchronous_commit={facts['synchronous_commit']}.",
    )
    for name, justify in [
        ("processes", "right"),
        ("system", "left"),
        ("items/s", "right"),
        ("each round", "right"),
        ("server CPU\nper item", "right"),
        ("server CPU\nvs pgqueuer", "right"),
        ("client CPU\nper item", "right"),
        ("WAL\nper item", "right"),
        ("other\nload", "right"),
        ("vs pgqueuer\nbest", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p, entry in results["processes"].items():
        rows = list(entry["systems"].items())
        for n, (key, r) in enumerate(rows):
            vs = _times(r["vs_pgqueuer_best"])
            if (key == "portraitkit" or key.startswith("candidate-")) and entry["pgqueuer_best"]:
                vs += f" {verdict(r['vs_pgqueuer_best'] >= 1.0)}"
            if key == entry["pgqueuer_best"]:
                vs += " (best)"
            table.add_row(
                str(p) if n == 0 else "",
                r["label"],
                f"{r['per_second']:,.0f}",
                " ".join(f"{x:,.0f}" for x in r["per_second_runs"]),
                _us(r["server_cpu_us_per_item"]),
                _times(r["server_cpu_vs_pgqueuer_best"]),
                _us(r["client_cpu_us_per_item"]),
                f"{r['wal_bytes_per_item']:,.0f} B",
                "-" if r["other_load_cores"] is None else f"{r['other_load_cores']:.1f}",
                vs,
                end_section=n == len(rows) - 1,
            )
    return table


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} µs"


def _times(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"  # None or NaN


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, help="jobs per run (default 6,000; 2,000 with --quick)")
    p.add_argument("--rounds", type=int, help="rounds (default 2; 1 with --quick)")
    p.add_argument(
        "--only",
        help="comma-separated keys to run (ceiling-1, ceiling-20, "
        "procrastinate, pgqueuer-100, portraitkit, ...)",
    )
    p.add_argument(
        "--candidate",
        action="append",
        metavar="[PATH.py:Class][+uvloop][+sql=FILE]",
        help="also run a proposed change beside the current worker (repeatable): a Worker "
        "class to use instead, its event loop, SQL to run first (a proposed migration)",
    )
    p.add_argument(
        "--profile",
        metavar="PREFIX",
        help="instead of the comparison: cProfile portraitkit's workers into "
        "PREFIX.<processes>p.<pid>.pstats",
    )
    args = p.parse_args()
    items = args.items or (2_000 if args.quick else 6_000)
    rounds = args.rounds or (1 if args.quick else 2)
    chosen = configs(args.candidate)
    if args.only:
        keys = set(args.only.split(","))
        chosen = [c for c in chosen if c.key in keys or c.key.startswith("candidate-")]
    if missing := sorted({c.system for c in chosen if not installed(c.system)}):
        log.print(f"[yellow]not installed, left out: {', '.join(missing)}[/]")
        chosen = [c for c in chosen if installed(c.system)]
    with bench_server(args.database_url, "throughput") as server_url:
        with open_connection(server_url, autocommit=True) as admin:
            facts = server_facts(admin)
        if args.profile:
            profile(server_url, items, chosen, args.profile)
            return
        runs = measure(server_url, items, rounds, chosen)
    results = results_of(runs, chosen)
    results["server"] = facts
    results["items"], results["rounds"] = items, rounds
    emit(args, [render(results, facts, items, rounds)], results)


def profile(server_url: str, items: int, chosen: list[Config], prefix: str) -> None:
    context = mp.get_context("spawn")
    config = next(c for c in reversed(chosen) if c.system == "portraitkit")
    with templates(server_url, {"portraitkit"}) as template:
        for processes in PROCESSES:
            run = run_once(
                context,
                server_url,
                template,
                config,
                processes,
                items,
                profile=f"{prefix}.{processes}p",
            )
            log.print(
                f"{config.key}, {processes} process(es): {run.per_second:,.0f}/s "
                f"(under cProfile) -> {prefix}.{processes}p.<pid>.pstats"
            )


if __name__ == "__main__":
    main()
