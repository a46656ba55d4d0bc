"""How soon an idle worker claims a new batch: with the LISTEN/NOTIFY feed, and polling only.

Two idle worker processes wait, each on its own database: one woken by the feed
(`NotifyFeed` on channel `portraitkit_generations`, rung by the insert trigger), one by
polling alone (`PollingFeed`, every POLL_SECONDS with the worker's jitter). A user then
creates a batch of 10 styles with `create_generation_batch`, the way the app does (role +
claims, one transaction), and the latency is the time from the end of that insert (the
server's clock just before COMMIT) to the start of the transaction that claimed the
batch's first item (`generations.started_at`): commit, NOTIFY delivery, wake-up and claim.
The two are sampled alternately, with a random pause between samples, so they share
whatever else the machine is doing.

The floor: the same path with nothing of portraitkit's in it, a bare LISTEN connection in
its own process reading the server's clock as soon as a plain NOTIFY arrives.

    .venv/bin/python benchmarks/wakeup_latency.py [--quick] [--json] [--database-url URL]
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
import uuid
from datetime import datetime
from typing import Any

from _common import (
    Connection,
    as_claims,
    bench_server,
    emit,
    log,
    make_users,
    open_connection,
    parser,
    percentile,
    ratio,
    scratch_database,
    server_facts,
    user_claims,
)
from _queue_runners import FLOOR_CHANNEL, serve
from rich.table import Table

POLL_SECONDS = 1.0
STYLES_PER_BATCH = 10
SAMPLE_TIMEOUT = 30.0
MODES = ("floor", "feed", "poll")
LABELS = {
    "floor": "bare LISTEN/NOTIFY (floor)",
    "feed": "worker woken by the feed",
    "poll": f"worker polling only (every {POLL_SECONDS:g} s)",
}


def worker_settings(poll_only: bool) -> dict[str, Any]:
    # The worker's defaults, with the poll interval under test and the noop generator.
    return {"poll_only": poll_only, "options": {"poll_seconds": POLL_SECONDS, "generator": "noop"}}


class Target:
    """One database with its waiting process, and how to take one sample on it."""

    def __init__(self, mode: str, url: str, context: Any) -> None:
        self.mode = mode
        self.url = url
        self.ready: Any = context.Queue()
        self.go = context.Event()
        system = "listener" if mode == "floor" else "portraitkit"
        settings = {} if mode == "floor" else worker_settings(poll_only=mode == "poll")
        self.process = context.Process(
            target=serve, args=(system, url, settings, self.ready, self.go), daemon=True
        )
        self.conn: Connection | None = None
        self.user: uuid.UUID | None = None
        self.styles: list[str] = []

    def start(self) -> None:
        self.process.start()

    def wait_ready(self) -> None:
        self.ready.get(timeout=120)
        self.go.set()
        self.conn = open_connection(self.url)
        if self.mode != "floor":
            self.user = self.conn.execute("select id from public.profiles limit 1").fetchone()[0]
            self.styles = [
                r[0]
                for r in self.conn.execute(
                    "select key from public.styles where is_active order by key limit %s",
                    (STYLES_PER_BATCH,),
                )
            ]
            self.conn.commit()
        time.sleep(0.5)  # the worker's first poll (right at start) is behind it

    def sample(self, n: int) -> float:
        """Seconds from the end of one insert to the first claim (or floor wake-up)."""
        assert self.conn is not None
        if self.mode == "floor":
            with self.conn.transaction():
                (inserted,) = self.conn.execute(
                    "select clock_timestamp() from pg_notify(%s, %s)", (FLOOR_CHANNEL, str(n))
                ).fetchone()
            payload, woken = self.ready.get(timeout=SAMPLE_TIMEOUT)
            assert payload == str(n)
            return (woken - inserted).total_seconds()
        assert self.user is not None
        with self.conn.transaction():
            as_claims(self.conn, user_claims(self.user))
            (batch,) = self.conn.execute(
                "select public.create_generation_batch(style_keys => %s, source_image_path => %s)",
                (self.styles, f"{self.user}/bench/{n}.png"),
            ).fetchone()
            (inserted,) = self.conn.execute("select clock_timestamp()").fetchone()
        claimed = self._first_claim(str(batch))
        return (claimed - inserted).total_seconds()

    def _first_claim(self, batch_id: str) -> datetime:
        assert self.conn is not None
        deadline = time.monotonic() + SAMPLE_TIMEOUT
        while True:
            (started,) = self.conn.execute(
                "select min(started_at) from public.generations where batch_id = %s", (batch_id,)
            ).fetchone()
            self.conn.commit()
            if started is not None:
                # Let the worker finish the batch: the next sample starts from idle.
                self._until_idle(batch_id, deadline)
                return started  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mode}: batch {batch_id} not claimed in time")
            time.sleep(0.002)

    def _until_idle(self, batch_id: str, deadline: float) -> None:
        assert self.conn is not None
        while True:
            (left,) = self.conn.execute(
                "select count(*) from public.generations where batch_id = %s"
                " and status in ('pending', 'processing')",
                (batch_id,),
            ).fetchone()
            self.conn.commit()
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mode}: batch {batch_id} not finished in time")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def measure(server_url: str, samples: int) -> dict[str, list[float]]:
    context = mp.get_context("spawn")
    results: dict[str, list[float]] = {m: [] for m in MODES}
    with (
        scratch_database(server_url, "wake_feed") as feed_url,
        scratch_database(server_url, "wake_poll") as poll_url,
        scratch_database(server_url, "wake_floor", migrate=False) as floor_url,
    ):
        for url in (feed_url, poll_url):
            with open_connection(url, autocommit=True) as admin:
                make_users(admin, 1, credits=1_000_000_000, label="waker")
        targets = [
            Target("floor", floor_url, context),
            Target("feed", feed_url, context),
            Target("poll", poll_url, context),
        ]
        try:
            for target in targets:
                target.start()
            for target in targets:
                target.wait_ready()
            for n in range(samples):
                for target in random.sample(targets, len(targets)):
                    # A pause of random length, so samples fall anywhere in a poll interval.
                    time.sleep(random.uniform(0.05, 0.25))
                    results[target.mode].append(target.sample(n))
                if (n + 1) % 10 == 0:
                    log.print(f"[dim]{n + 1}/{samples} samples[/]")
        finally:
            for target in targets:
                target.stop()
    return results


def results_of(samples: dict[str, list[float]]) -> dict[str, Any]:
    poll_median = percentile(samples["poll"], 50)
    floor_median = percentile(samples["floor"], 50)
    out: dict[str, Any] = {}
    for mode in MODES:
        values = samples[mode]
        out[mode] = {
            "label": LABELS[mode],
            "samples": len(values),
            "median_ms": percentile(values, 50) * 1e3,
            "p95_ms": percentile(values, 95) * 1e3,
            "max_ms": max(values) * 1e3,
            "vs_polling": ratio(percentile(values, 50), poll_median),
            "vs_floor": ratio(percentile(values, 50), floor_median),
        }
    return out


def render(results: dict[str, Any], facts: dict[str, Any]) -> Table:
    table = Table(
        title="From a batch's insert to its first claim, on an idle worker",
        caption="Time from the end of create_generation_batch (server clock, just before "
        "COMMIT) to the start of the claiming transaction (generations.started_at); the "
        "floor is a bare LISTEN process reading the server clock on a plain NOTIFY. "
        "Samples interleaved. Baselines: polling only, and the floor. "
        f"PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs, "
        f"synchronous_commit={facts['synchronous_commit']}.",
    )
    for name in (
        "path",
        "samples",
        "median",
        "p95",
        "max",
        "median vs\npolling",
        "median vs\nfloor",
    ):
        table.add_column(name, justify="left" if name == "path" else "right")
    for r in results.values():
        table.add_row(
            r["label"],
            str(r["samples"]),
            f"{r['median_ms']:,.1f} ms",
            f"{r['p95_ms']:,.1f} ms",
            f"{r['max_ms']:,.1f} ms",
            f"{r['vs_polling']:.3f}",
            f"{r['vs_floor']:.1f}",
        )
    return table


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, help="samples per path (default 60; 20 with --quick)")
    args = p.parse_args()
    samples = args.samples or (20 if args.quick else 60)
    with bench_server(args.database_url, "wakeup") as server_url:
        with open_connection(server_url, autocommit=True) as admin:
            facts = server_facts(admin)
        measured = measure(server_url, samples)
    results = results_of(measured)
    emit(
        args,
        [render(results, facts)],
        {"paths": results, "server": facts, "poll_seconds": POLL_SECONDS},
    )


if __name__ == "__main__":
    main()
