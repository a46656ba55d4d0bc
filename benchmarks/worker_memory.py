"""A worker's resident memory: flat with work done, and small with the real generator.

Both run the worker as people run it, `portraitkit worker`, in its own process on a
fresh database, with its local storage in a temporary state directory:

- noop: `--generator noop --concurrency 64` (the most the CLI allows) over 20,000 items
  (2,000 batches of 10). Its RSS after 2,000 items is the baseline; after 20,000 it must
  be within 10% of it (no growth with work done).
- local: the default worker, `--generator local` at the default concurrency (4), over
  5,000 items (500 batches of 10 styles of the sample portrait): real decoding, stylising
  and PNG encoding. The baseline is the same worker idle and ready before the work
  arrives; the table shows its RSS after a fifth, half and all of the items, and its peak
  (the kernel's high-water mark), which must stay under 300 MB.

Items are loaded in bulk as the superuser (triggers off, so a NOTIFY rings the worker),
and the parent samples the worker's RSS (psutil) against the items completed.

    .venv/bin/python benchmarks/worker_memory.py [--quick] [--json] [--database-url URL]
        [--only noop|local] [--local-items N]

On 2 cores the whole run takes about 8 minutes (the local part about 12 items/s, 7
minutes for 5,000; noop about a minute); `--quick` (6,000 noop and 1,000 local items)
about 2 minutes, `--only local` skips the noop part.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _common import (
    Connection,
    bench_server,
    emit,
    load_batches,
    log,
    make_users,
    open_connection,
    parser,
    ratio,
    scratch_database,
    server_facts,
    verdict,
)
from rich.table import Table

from portraitkit.generators.noop import NOOP_PNG
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.storage import DEFAULT_BUCKET
from portraitkit.worker import WorkerOptions

STYLES_PER_BATCH = 10
GROWTH_LIMIT = 1.10
PEAK_LIMIT_MB = 300
NOOP_CONCURRENCY = 64
LOCAL_ITEMS = 5_000
LOCAL_MARKS = (0.2, 0.5, 1.0)  # RSS after these fractions of the local items
MB = 1024 * 1024
TIMEOUT = 600.0
LOCAL_SECONDS_PER_ITEM = 1.0  # the local run's time limit: far beyond 2 cores' pace


@dataclass
class Trace:
    """RSS samples of one worker against the items it had completed."""

    idle_rss: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)  # (completed, rss)
    peak_rss: int = 0  # VmHWM: the most it ever held
    seconds: float = 0.0
    stdout: str = ""

    def rss_at(self, completed: int) -> tuple[int, int]:
        """The first sample at or past `completed` items: (items then, rss)."""
        return next((c, r) for c, r in self.samples if c >= completed)


def start_worker(url: str, state_dir: Path, *args: str) -> subprocess.Popen[str]:
    cli = Path(sys.executable).with_name("portraitkit")
    env = {**os.environ, "PORTRAITKIT_JWT_SECRET": secrets.token_hex(32)}
    for name in (
        "SUPABASE_URL",
        "SUPABASE_ANON_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
        "DATABASE_URL",
        "PORTRAITKIT_GENERATOR",
    ):
        env.pop(name, None)
    return subprocess.Popen(
        [str(cli), "--state-dir", str(state_dir), "--database-url", url, "worker", *args],
        cwd=state_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_listening(conn: Connection, worker: subprocess.Popen[str]) -> None:
    """Until the worker's LISTEN connection is up: it is idle and ready."""
    deadline = time.monotonic() + 120
    while True:
        (listening,) = conn.execute(
            "select exists (select from pg_stat_activity where application_name ="
            " 'portraitkit-listen' and datname = current_database())"
        ).fetchone()
        conn.commit()  # pg_stat_activity is read once per transaction
        if listening:
            break
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start: {worker.communicate()[0]}")
        time.sleep(0.05)
    time.sleep(0.5)  # its first poll and recovery pass are behind it


def load(conn: Connection, state_dir: Path, batches: int, users: int, source: bytes) -> int:
    """`batches` pending batches of 10, their source photo in the worker's storage."""
    ids = make_users(conn, users, credits=1_000_000_000, label="memory")
    per_user = {u: batches // users + (n < batches % users) for n, u in enumerate(ids)}
    load_batches(conn, per_user, STYLES_PER_BATCH, mix={"pending": 100})
    conn.commit()
    bucket = state_dir / "storage" / DEFAULT_BUCKET
    for (path,) in conn.execute("select original_image_url from public.generation_batches"):
        target = bucket / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source)
    conn.execute("notify portraitkit_generations")  # the bulk load fired no trigger
    conn.commit()
    return batches * STYLES_PER_BATCH


def follow(
    conn: Connection,
    worker: subprocess.Popen[str],
    items: int,
    trace: Trace,
    every: float,
    timeout: float = TIMEOUT,
) -> None:
    """Sample RSS against items completed until all are, then stop the worker."""
    process = psutil.Process(worker.pid)
    started = time.monotonic()
    while True:
        (done,) = conn.execute(
            "select coalesce(sum(completed_count), 0) from public.generation_batches"
        ).fetchone()
        conn.commit()
        trace.samples.append((int(done), process.memory_info().rss))
        if done >= items:
            break
        if worker.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError(f"the worker stopped at {done}/{items}: {worker.communicate()[0]}")
        time.sleep(every)
    trace.seconds = time.monotonic() - started
    time.sleep(1.0)  # idle again: what it keeps once the work is done
    trace.samples.append((items, process.memory_info().rss))
    trace.peak_rss = _peak(worker.pid)
    worker.send_signal(signal.SIGTERM)
    trace.stdout = worker.communicate(timeout=60)[0]
    if worker.returncode != 0:
        raise RuntimeError(f"the worker exited with {worker.returncode}: {trace.stdout}")


def _peak(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_noop(server_url: str, items: int) -> Trace:
    state_dir = Path(tempfile.mkdtemp(prefix="portraitkit-bench-memory-"))
    try:
        with scratch_database(server_url, "memory_noop") as url, open_connection(url) as conn:
            loaded = load(conn, state_dir, items // STYLES_PER_BATCH, 100, NOOP_PNG)
            worker = start_worker(
                url, state_dir, "--generator", "noop", "--concurrency", str(NOOP_CONCURRENCY)
            )
            trace = Trace()
            try:
                follow(conn, worker, loaded, trace, every=0.05)
            finally:
                if worker.poll() is None:
                    worker.kill()
            return trace
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def measure_local(server_url: str, items: int) -> Trace:
    state_dir = Path(tempfile.mkdtemp(prefix="portraitkit-bench-memory-"))
    try:
        with scratch_database(server_url, "memory_local") as url, open_connection(url) as conn:
            worker = start_worker(url, state_dir, "--generator", "local")
            trace = Trace()
            try:
                wait_listening(conn, worker)
                trace.idle_rss = psutil.Process(worker.pid).memory_info().rss
                loaded = load(conn, state_dir, items // STYLES_PER_BATCH, 1, sample_portrait_png())
                timeout = TIMEOUT + loaded * LOCAL_SECONDS_PER_ITEM
                follow(conn, worker, loaded, trace, every=0.2, timeout=timeout)
            finally:
                if worker.poll() is None:
                    worker.kill()
            return trace
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def noop_results(noop: Trace, noop_items: int) -> dict[str, Any]:
    base_items, base = noop.rss_at(2_000)
    points: list[dict[str, Any]] = []
    for mark in (2_000, 5_000, 10_000, noop_items):
        if mark > noop_items or (points and mark == points[-1]["target_items"]):
            continue
        at, rss = noop.rss_at(mark)
        points.append(
            {"target_items": mark, "items": at, "rss_mb": rss / MB, "vs_2000": ratio(rss, base)}
        )
    final = noop.samples[-1][1]
    growth = ratio(points[-1]["rss_mb"] * MB, base)
    return {
        "concurrency": NOOP_CONCURRENCY,
        "items": noop_items,
        "points": points,
        "idle_after_mb": final / MB,
        "idle_after_vs_2000": ratio(final, base),
        "peak_mb": noop.peak_rss / MB,
        "items_per_second": noop_items / noop.seconds,
        "growth": growth,
        "target_met": growth <= GROWTH_LIMIT,
        "baseline_items": base_items,
    }


def local_results(local: Trace, local_items: int) -> dict[str, Any]:
    start = local.idle_rss
    points: list[dict[str, Any]] = []
    for fraction in LOCAL_MARKS:
        at, rss = local.rss_at(round(local_items * fraction))
        points.append({"items": at, "rss_mb": rss / MB, "vs_start": ratio(rss, start)})
    final = local.samples[-1][1]
    return {
        "concurrency": WorkerOptions().concurrency,
        "items": local_items,
        "start_mb": start / MB,
        "points": points,
        "idle_after_mb": final / MB,
        "idle_after_vs_start": ratio(final, start),
        "peak_mb": local.peak_rss / MB,
        "peak_vs_start": ratio(local.peak_rss, start),
        "items_per_second": local_items / local.seconds,
        "seconds": local.seconds,
        "target_met": local.peak_rss < PEAK_LIMIT_MB * MB,
    }


def render(results: dict[str, Any], facts: dict[str, Any]) -> Table:
    noop, local = results.get("noop"), results.get("local")
    table = Table(
        title="A worker's resident memory (RSS)",
        caption="`portraitkit worker` as a process on a fresh database, sampled with psutil "
        "against the items it had completed; peak = the kernel's high-water mark (VmHWM). "
        f"Baselines: the noop worker after 2,000 items; the local worker idle before its "
        f"work. Targets: noop after all ≤ {GROWTH_LIMIT:.2f}x after 2,000; local "
        f"peak < {PEAK_LIMIT_MB} MB. PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs.",
    )
    for name in ("worker", "when", "items done", "RSS", "vs baseline", "target"):
        table.add_column(name, justify="left" if name in ("worker", "when") else "right")
    if noop is not None:
        _noop_rows(table, noop)
    if local is not None:
        _local_rows(table, local)
    return table


def _noop_rows(table: Table, noop: dict[str, Any]) -> None:
    label = f"noop, concurrency {noop['concurrency']} ({noop['items_per_second']:,.0f} items/s)"
    for n, point in enumerate(noop["points"]):
        last = n == len(noop["points"]) - 1
        table.add_row(
            label if n == 0 else "",
            "baseline" if n == 0 else ("after all" if last else "during"),
            f"{point['items']:,}",
            f"{point['rss_mb']:.1f} MB",
            f"{point['vs_2000']:.3f}",
            f"≤ {GROWTH_LIMIT:.2f} {verdict(noop['target_met'])}" if last else "",
        )
    table.add_row(
        "",
        "idle, 1 s later",
        f"{noop['items']:,}",
        f"{noop['idle_after_mb']:.1f} MB",
        f"{noop['idle_after_vs_2000']:.3f}",
        "",
    )
    table.add_row("", "peak (VmHWM)", "", f"{noop['peak_mb']:.1f} MB", "", "", end_section=True)


def _local_rows(table: Table, local: dict[str, Any]) -> None:
    label = (
        f"local, default concurrency {local['concurrency']} "
        f"({local['items_per_second']:.1f} items/s, {local['seconds'] / 60:.0f} min)"
    )
    table.add_row(
        label, "start: idle, ready (baseline)", "0", f"{local['start_mb']:.1f} MB", "1.000", ""
    )
    for n, point in enumerate(local["points"]):
        last = n == len(local["points"]) - 1
        table.add_row(
            "",
            "after all" if last else "during",
            f"{point['items']:,}",
            f"{point['rss_mb']:.1f} MB",
            f"{point['vs_start']:.3f}",
            "",
        )
    table.add_row(
        "",
        "idle, 1 s later",
        f"{local['items']:,}",
        f"{local['idle_after_mb']:.1f} MB",
        f"{local['idle_after_vs_start']:.3f}",
        "",
    )
    table.add_row(
        "",
        "peak (VmHWM)",
        "",
        f"{local['peak_mb']:.1f} MB",
        f"{local['peak_vs_start']:.3f}",
        f"< {PEAK_LIMIT_MB} MB {verdict(local['target_met'])}",
    )


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("noop", "local"), help="run one of the two workers")
    p.add_argument(
        "--local-items",
        type=int,
        help=f"items for the local worker, a multiple of {STYLES_PER_BATCH} "
        f"(default {LOCAL_ITEMS:,}; 1,000 with --quick)",
    )
    args = p.parse_args()
    noop_items = 6_000 if args.quick else 20_000
    local_items = args.local_items or (1_000 if args.quick else LOCAL_ITEMS)
    if local_items < STYLES_PER_BATCH or local_items % STYLES_PER_BATCH:
        p.error(f"--local-items must be a positive multiple of {STYLES_PER_BATCH}")
    results: dict[str, Any] = {}
    with bench_server(args.database_url, "memory") as server_url:
        with open_connection(server_url, autocommit=True) as admin:
            facts = server_facts(admin)
        if args.only in (None, "noop"):
            log.print(f"[dim]noop worker over {noop_items:,} items[/]")
            results["noop"] = noop_results(measure_noop(server_url, noop_items), noop_items)
        if args.only in (None, "local"):
            log.print(f"[dim]local worker over {local_items:,} items[/]")
            local = measure_local(server_url, local_items)
            results["local"] = local_results(local, local_items)
    results["server"] = facts
    emit(args, [render(results, facts)], results)


if __name__ == "__main__":
    main()
