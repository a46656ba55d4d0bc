"""1,000 live batch pages at once: every one sees its batch end, the server stays flat.

The app runs as `portraitkit serve --no-worker` runs it (uvicorn serving `create_app`, in
its own process, on a fresh database) and a worker runs beside it in another process,
its generator slowed to SLOW_SECONDS an item so the batches take a while. 100 users (20
with --quick) each create one batch of STYLES styles through the API, then 10 clients per
batch (5), tabs of that user, open `GET /api/user/batches/{id}/events` with httpx over
loopback: first a tenth of them, then all. The worker starts; each client reads its
stream until the `end` event. Then as many streams again open all at once on the finished
batches (one `end` each), to see whether what the server holds grows with connections.

Measured: clients that saw `end` (must be all), the lag from a batch's `finished_at` (the
database's clock, same host) to each client's `end`, the server's RSS (psutil) and the
database connections it holds (pg_stat_activity rows whose client port is one of its
sockets) at 0 clients, a tenth, all, during the run (peak), after, and after the second
wave; and the batch reads the server did (`app.state.events.reads`, which the benchmark's
server process exposes on an extra route of its own, `/bench/counters`) against the
events it delivered. A read happens once per connecting client (its first state, as that
user) and then once per changed batch, however many watch it: clients per read is what
fan-out saves.

    .venv/bin/python benchmarks/sse_fanout.py [--quick] [--json] [--database-url URL]
        [--batches N] [--clients-per-batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    Connection,
    ServerCpu,
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
)
from rich.table import Table

from portraitkit.auth import issue_user_token
from portraitkit.generators.sample import sample_portrait_png

STYLES = 4
SLOW_SECONDS = 0.25
WORKER_CONCURRENCY = 8
TIMEOUT = 300.0  # the whole run after the worker starts
MB = 1024 * 1024


# -- the two processes beside the benchmark: the server and the worker ------------------


def run_server(url: str, state_dir: str, port: int) -> None:
    """The app as `portraitkit serve --no-worker` runs it, plus one route of the
    benchmark's own that reads the fan-out's counters."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from portraitkit.settings import Settings
    from portraitkit.web import create_app

    app = create_app(Settings(database_url=url, state_dir=Path(state_dir)), worker=False)

    async def counters(request: Request) -> JSONResponse:
        events = request.app.state.events
        return JSONResponse({"reads": events.reads, "watchers": events.watchers})

    app.router.routes.insert(0, Route("/bench/counters", counters))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


def run_worker(url: str, state_dir: str, concurrency: int, seconds: float) -> None:
    """The worker, its generator taking `seconds` an item; it drains the queue and exits."""
    from _queue_runners import FixedTimeGenerator

    from portraitkit.service import open_worker
    from portraitkit.settings import Settings
    from portraitkit.worker import WorkerOptions

    async def drain() -> None:
        settings = Settings(database_url=url, state_dir=Path(state_dir))
        options = WorkerOptions(concurrency=concurrency, poll_seconds=0.5, worker_id="sse-bench")
        generator = FixedTimeGenerator(seconds)
        async with open_worker(settings, options, lambda _name: generator) as worker:
            await worker.run(once=True)

    asyncio.run(drain())


def spawn(role: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *args], env=env, stdout=subprocess.DEVNULL
    )


def clean_env(secret: str) -> dict[str, str]:
    env = {**os.environ, "PORTRAITKIT_JWT_SECRET": secret}
    for name in ("SUPABASE_URL", "SUPABASE_ANON_KEY", "DATABASE_URL", "PORTRAITKIT_GENERATOR"):
        env.pop(name, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the clients -----------------------------------------------------------------------


@dataclass
class Client:
    batch_id: str
    headers: dict[str, str]
    events: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None  # wall clock, to compare with the database's finished_at
    final: dict[str, Any] | None = None
    error: str | None = None


async def watch(http: httpx.AsyncClient, client: Client) -> None:
    """Read one batch's event stream until its `end` event."""
    url = f"/api/user/batches/{client.batch_id}/events"
    try:
        async with http.stream("GET", url, headers=client.headers) as response:
            if response.status_code != 200:
                await response.aread()
                client.error = f"HTTP {response.status_code}: {response.json()['message']}"
                return
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    client.events += 1
                    client.connected.set()
                    if event == "end":
                        client.ended_at = time.time()
                        client.final = json.loads(line[5:])
                        return
    except (httpx.HTTPError, OSError) as exc:
        client.error = f"{type(exc).__name__}: {exc}"
    except asyncio.CancelledError:
        client.error = "no `end` within the time limit"
        raise
    finally:
        client.connected.set()


# -- what the server holds ---------------------------------------------------------------


@dataclass
class Sample:
    watchers: int  # open event streams, as the server counts them
    rss: int
    connections: int
    reads: int


class Server:
    """The server process seen from outside: RSS, its database connections, counters."""

    def __init__(self, pid: int, http: httpx.AsyncClient, admin: Connection):
        self.process = psutil.Process(pid)
        self.http = http
        self.admin = admin  # the benchmark's own connection to the database

    def connections(self) -> int:
        ports = {c.laddr.port for c in self.process.net_connections(kind="tcp") if c.raddr}
        rows = self.admin.execute(
            "select client_port from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        ).fetchall()
        return sum(1 for (port,) in rows if port in ports)

    async def sample(self) -> Sample:
        counters = (await self.http.get("/bench/counters")).json()
        rss = self.process.memory_info().rss
        return Sample(counters["watchers"], rss, self.connections(), counters["reads"])


class Costs:
    """CPU seconds a stretch of the run cost the server, the clients (this process) and
    the database, and how busy the machine was meanwhile (other work included)."""

    def __init__(self, server: psutil.Process, database: ServerCpu) -> None:
        self.server, self.database, self.me = server, database, psutil.Process()
        psutil.cpu_percent()  # starts the machine-wide measurement
        self.load = os.getloadavg()[0]
        self.started = (cpu_seconds(server), cpu_seconds(self.me), database.snapshot())

    def stop(self) -> dict[str, float]:
        server, me, database = self.started
        return {
            "server": cpu_seconds(self.server) - server,
            "clients": cpu_seconds(self.me) - me,
            "database": ServerCpu.between(database, self.database.snapshot()),
            "machine_busy_pct": psutil.cpu_percent(),
            "load_before": self.load,
            "load_after": os.getloadavg()[0],
        }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def wait_ready(http: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the server did not get ready in 120 s")


# -- one run -----------------------------------------------------------------------------


async def create_batches(
    http: httpx.AsyncClient, admin: Connection, secret: str, batches: int
) -> list[tuple[str, dict[str, str]]]:
    """One batch of STYLES styles for each of `batches` new users, through the API."""
    users = make_users(admin, batches, credits=1000, label="sse")
    catalogue = (await http.get("/api/styles")).json()
    styles = sorted((s for g in catalogue for s in g["styles"]), key=lambda s: s["credit_cost"])
    keys = [s["key"] for s in styles[:STYLES]]
    photo = sample_portrait_png()
    made = []
    for user in users:
        headers = {"Authorization": f"Bearer {issue_user_token(secret, user, None)}"}
        response = await http.post(
            "/api/generate/batch",
            headers=headers,
            files={"photo": ("me.png", photo, "image/png")},
            data={"styles": keys},
        )
        response.raise_for_status()
        made.append((response.json()["id"], headers))
    return made


async def ramp(
    http: httpx.AsyncClient, server: Server, clients: list[Client]
) -> tuple[list[asyncio.Task[None]], list[Sample]]:
    """Connect a tenth of the clients (spread over the batches), then the rest, sampling
    the server before, between and after; a client counts once its first event came."""
    samples = [await server.sample()]
    tasks: list[asyncio.Task[None]] = []
    for group in (clients[::10], [c for n, c in enumerate(clients) if n % 10]):
        tasks += [asyncio.create_task(watch(http, c)) for c in group]
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in group)), 120)
        samples.append(await server.sample())
    return tasks, samples


async def follow(server: Server, tasks: list[asyncio.Task[None]]) -> tuple[float, Sample, Sample]:
    """Sample the server every half second until every stream ended (or TIMEOUT): the
    seconds it took, the peak of each figure during the run, and the server after."""
    started = time.monotonic()
    during: list[Sample] = []
    pending = set(tasks)
    while pending and time.monotonic() - started < TIMEOUT:
        _done, pending = await asyncio.wait(pending, timeout=0.5)
        during.append(await server.sample())
    seconds = time.monotonic() - started
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    peak = Sample(
        watchers=max(s.watchers for s in during),
        rss=max(s.rss for s in during),
        connections=max(s.connections for s in during),
        reads=during[-1].reads,
    )
    await asyncio.sleep(1.0)  # the streams closed: what the server keeps
    return seconds, peak, await server.sample()


async def churn(
    http: httpx.AsyncClient, server: Server, clients: list[Client]
) -> tuple[Sample, list[Client]]:
    """The same number of streams again, all at once, on the finished batches (one `end`
    each, then closed): what the server holds after twice the connections shows whether
    it grows."""
    again = [Client(c.batch_id, c.headers) for c in clients]
    tasks = [asyncio.create_task(watch(http, c)) for c in again]
    _done, pending = await asyncio.wait(tasks, timeout=120)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    return await server.sample(), again


async def measure(url: str, batches: int, per_batch: int) -> dict[str, Any]:
    secret = secrets.token_hex(32)
    env = clean_env(secret)
    state_dir = tempfile.mkdtemp(prefix="portraitkit-bench-sse-")
    port = free_port()
    processes = [spawn("server", url, state_dir, str(port), env=env)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
    timeout = httpx.Timeout(60.0, connect=60.0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=timeout) as control,
            httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as http,
        ):
            with open_connection(url, autocommit=True) as admin:
                await wait_ready(control, processes[0])
                server = Server(processes[0].pid, control, admin)
                log.print(f"[dim]{batches} batches of {STYLES} styles through the API[/]")
                made = await create_batches(control, admin, secret, batches)
                clients = [Client(b, h) for b, h in made for _ in range(per_batch)]
                log.print(f"[dim]{len(clients) // 10} clients, then {len(clients)}[/]")
                tasks, samples = await ramp(http, server, clients)
                log.print(f"[dim]worker: {WORKER_CONCURRENCY} at a time, {SLOW_SECONDS} s/item[/]")
                costs = Costs(server.process, ServerCpu(admin))
                args = (url, state_dir, str(WORKER_CONCURRENCY), str(SLOW_SECONDS))
                processes.append(spawn("worker", *args, env=env))
                seconds, peak, after = await follow(server, tasks)
                cpu = costs.stop()
                log.print(f"[dim]run: {seconds:.1f} s; {len(clients):,} streams again at once[/]")
                again, churned = await churn(http, server, clients)
            worker_exit = processes[1].wait(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "batches": batches,
        "styles": STYLES,
        "clients_per_batch": per_batch,
        "worker": {"concurrency": WORKER_CONCURRENCY, "seconds_per_item": SLOW_SECONDS},
        "worker_exit": worker_exit,
        "run_seconds": seconds,
        "cpu_seconds": cpu,
        **outcome(clients),
        "again": {
            "ended": sum(1 for c in churned if c.final),
            "errors": error_counts(churned),
        },
        "samples": [vars(s) for s in [*samples, peak, after, again]],
        "sample_labels": [
            "0 clients",
            "a tenth",
            "all",
            "peak during the run",
            "after, all closed",
            "after as many again",
        ],
        "reads_connect": samples[-1].reads - samples[0].reads,
        "reads_run": after.reads - samples[-1].reads,
    }


def error_counts(clients: list[Client]) -> dict[str, int]:
    return dict(Counter(c.error for c in clients if c.error).most_common())


def outcome(clients: list[Client]) -> dict[str, Any]:
    """What the clients saw: `end` events, final statuses, lag behind finished_at."""
    finals = [(c.ended_at, c.final) for c in clients if c.ended_at and c.final]
    lags = sorted(
        ended - datetime.fromisoformat(final["finished_at"]).timestamp()
        for ended, final in finals
        if final["finished_at"]
    )
    delivered = sum(c.events for c in clients)
    return {
        "clients": len(clients),
        "ended": len(finals),
        "completed": sum(1 for _, final in finals if final["status"] == "completed"),
        "errors": error_counts(clients),
        "lag_ms": {
            "median": 1000 * percentile(lags, 50) if lags else None,
            "p95": 1000 * percentile(lags, 95) if lags else None,
            "max": 1000 * lags[-1] if lags else None,
        },
        "events_delivered": delivered,
        # after the first, which each client got from its own read when it connected
        "events_during_run": delivered - len(clients),
    }


# -- the report --------------------------------------------------------------------------


def errors_text(errors: dict[str, int]) -> str:
    return "; ".join(f"{n}x {text[:60]}" for text, n in errors.items()) or "none"


def render(r: dict[str, Any], facts: dict[str, Any]) -> list[Table]:
    cpu, lag = r["cpu_seconds"], r["lag_ms"]
    fan = Table(
        title=f"SSE fan-out: {r['clients']:,} clients on {r['batches']} running batches",
        caption=f"{r['batches']} batches of {r['styles']} styles (one user each), "
        f"{r['clients_per_batch']} clients each, while a worker ({r['worker']['concurrency']} "
        f"at a time, {r['worker']['seconds_per_item']} s an item) ran them. Lag: a client's "
        f"`end` minus the batch's finished_at. Reads: one per client as it connects, one per "
        f"changed batch, and the 5 s backstop's. The machine was {cpu['machine_busy_pct']:.0f}% "
        f"busy meanwhile (load {cpu['load_before']:.1f} → {cpu['load_after']:.1f}, other "
        f"work included). PostgreSQL {facts['postgres']}, {facts['cpus']} CPUs.",
    )
    fan.add_column("figure")
    fan.add_column("value", justify="right")
    rows = [
        ("clients that saw `end`", f"{r['ended']:,} / {r['clients']:,}"),
        ("… with their batch completed", f"{r['completed']:,}"),
        ("client errors", errors_text(r["errors"])),
        ("as many again at once, on the finished batches: `end`", f"{r['again']['ended']:,}"),
        ("… errors", errors_text(r["again"]["errors"])),
        ("worker start → last `end`", f"{r['run_seconds']:.1f} s"),
        ("worker exit status", str(r["worker_exit"])),
    ]
    if lag["median"] is not None:
        rows.append(("finished_at → `end`: median", f"{lag['median']:,.0f} ms"))
        rows.append(("… p95 / max", f"{lag['p95']:,.0f} / {lag['max']:,.0f} ms"))
    rows += [
        (
            "CPU: server / clients / database",
            "{server:.1f} / {clients:.1f} / {database:.1f} s".format(**cpu),
        ),
        ("batch reads as clients connected", f"{r['reads_connect']:,}"),
        ("batch reads during the run", f"{r['reads_run']:,}"),
        ("… per batch", f"{r['reads_run'] / r['batches']:.1f}"),
        ("events delivered during the run", f"{r['events_during_run']:,}"),
        ("events delivered per read", f"{ratio(r['events_during_run'], r['reads_run']):.1f}"),
    ]
    for row in rows:
        fan.add_row(*row)

    held = Table(
        title="What the server process holds",
        caption="RSS from psutil; DB connections: pg_stat_activity rows whose client port is "
        "one of the server's sockets (its pool, at most 10, and its LISTEN connection); "
        "reads: app.state.events.reads so far; streams: its watchers.",
    )
    for name in ("when", "open streams", "RSS", "vs 0 clients", "DB connections", "reads"):
        held.add_column(name, justify="left" if name == "when" else "right")
    base = r["samples"][0]
    for label, sample in zip(r["sample_labels"], r["samples"], strict=True):
        held.add_row(
            label,
            f"{sample['watchers']:,}",
            f"{sample['rss'] / MB:.1f} MB",
            f"{ratio(sample['rss'], base['rss']):.3f}",
            str(sample["connections"]),
            f"{sample['reads']:,}",
        )
    return [fan, held]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, help="batches (one user each); default 100, quick 20")
    p.add_argument("--clients-per-batch", type=int, help="default 10, quick 5")
    p.add_argument("--role", choices=["server", "worker"], help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.role == "server":
        run_server(rest[0], rest[1], int(rest[2]))
        return
    if args.role == "worker":
        run_worker(rest[0], rest[1], int(rest[2]), float(rest[3]))
        return
    batches = args.batches or (20 if args.quick else 100)
    per_batch = args.clients_per_batch or (5 if args.quick else 10)
    with bench_server(args.database_url, "sse") as server_url:
        with open_connection(server_url, autocommit=True) as admin:
            facts = server_facts(admin)
        with scratch_database(server_url, "sse") as url:
            results = asyncio.run(measure(url, batches, per_batch))
    results["server"] = facts
    emit(args, render(results, facts), results)


if __name__ == "__main__":
    main()
