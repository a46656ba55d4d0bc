"""Worker processes for the queue benchmarks: portraitkit's worker, procrastinate's,
pgqueuer's, two bare claim-and-complete loops on a plain table (the ceilings), and a bare
LISTEN connection (the wake-up floor).

Each runs in its own process, started with `serve(...)` as a `multiprocessing` target: it
connects and gets everything ready, puts its pid on `ready`, waits for `go`, then works
until the queue is empty (the ceilings) or until SIGTERM (the workers, which then stop
the way their own runner stops them). Nothing here decides when a run ends: the parent
reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import secrets
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

CEILING_TABLE = "bench_jobs"
PROCRASTINATE_TASK = "noop"
PGQUEUER_ENTRYPOINT = "noop"
FLOOR_CHANNEL = "portraitkit_bench_floor"


def serve(system: str, url: str, settings: dict[str, Any], ready: Any, go: Any) -> None:
    """The body of one worker process."""
    if system == "portraitkit":
        run_async(_portraitkit(url, settings, ready, go), uvloop=bool(settings.get("uvloop")))
    elif system == "procrastinate":
        run_async(_procrastinate(url, settings, ready, go))
    elif system == "pgqueuer":
        run_async(_pgqueuer(url, settings, ready, go), uvloop=True)  # as `pgq run` does
    elif system == "ceiling":
        _ceiling(url, settings, ready, go)
    elif system == "listener":
        run_async(_listener(url, ready, go))
    else:
        raise ValueError(f"unknown system {system!r}")


def run_async(main: Any, *, uvloop: bool = False) -> None:
    if uvloop:
        import uvloop as _uvloop

        _uvloop.run(main)
    else:
        asyncio.run(main)


async def _until_go(ready: Any, go: Any) -> None:
    ready.put(os.getpid())
    await asyncio.to_thread(go.wait)


def _on_sigterm(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


# -- portraitkit ------------------------------------------------------------------------


class NullStorage:
    """Stores nothing and hands every source back as the same tiny PNG: the benchmark
    measures the queue, not the disk."""

    async def put(self, path: str, data: bytes, content_type: str) -> None:
        return None

    async def get(self, path: str) -> bytes:
        from portraitkit.generators.noop import NOOP_PNG

        return NOOP_PNG

    async def remove(self, paths: list[str]) -> None:
        return None

    async def url(self, path: str, expires_in: int = 3600) -> str:
        return path


class FixedTimeGenerator:
    """Waits a fixed time, then returns the noop PNG: rendering modelled as time spent
    elsewhere (a hosted model), which holds a worker slot but not the CPU."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def generate(self, request: Any) -> Any:
        from portraitkit.generators.noop import NoopGenerator

        await asyncio.sleep(self.seconds)
        return await NoopGenerator().generate(request)


FIXED_TIME_GENERATOR = "fixed-time"


def _generators(settings: dict[str, Any]) -> Callable[[str], Any]:
    """The registry, plus FIXED_TIME_GENERATOR taking ``render_seconds`` per item."""
    from portraitkit.generators import get_generator

    def build(name: str) -> Any:
        if name == FIXED_TIME_GENERATOR:
            return FixedTimeGenerator(float(settings.get("render_seconds", 0.02)))
        return get_generator(name)

    return build


async def _portraitkit(url: str, settings: dict[str, Any], ready: Any, go: Any) -> None:
    """A Worker wired as `service.open_worker` wires one for direct Postgres (service-role
    token, a pool of 4, the LISTEN feed), but with a storage that stores nothing.

    settings: ``options`` (WorkerOptions fields; ``"generator": FIXED_TIME_GENERATOR``
    with ``render_seconds`` for a generator that only waits), ``poll_only`` (PollingFeed
    instead of the LISTEN feed), ``worker_class`` (a candidate Worker, "path.py:Name" or
    "module:Name"), ``uvloop``, ``profile`` (cProfile into "<profile>.<pid>.pstats").
    """
    from portraitkit.auth import issue_service_token
    from portraitkit.feeds import Feed, NotifyFeed, PollingFeed
    from portraitkit.transports.postgres import PostgresTransport, make_pool
    from portraitkit.worker import Worker, WorkerOptions

    secret = secrets.token_hex(32)
    token = issue_service_token(secret)
    pool = make_pool(url, max_size=4)
    await pool.open(wait=True)
    held = [await pool.getconn() for _ in range(4)]  # connect now, not during the run
    for conn in held:
        await pool.putconn(conn)
    transport = PostgresTransport(pool, lambda: token, secret, owns_pool=True)
    feed: Feed
    if settings.get("poll_only"):
        feed = PollingFeed()
    else:
        notify = await NotifyFeed(url).start()
        await asyncio.wait_for(notify.connected.wait(), 30)
        feed = notify
    options = WorkerOptions(**settings.get("options", {}))
    worker_class = load_class(settings["worker_class"]) if settings.get("worker_class") else Worker
    worker = worker_class(
        transport, NullStorage(), _generators(settings), feed=feed, options=options
    )
    _on_sigterm(worker.stop)
    await _until_go(ready, go)
    try:
        if settings.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            try:
                await worker.run()
            finally:
                profiler.disable()
                profiler.dump_stats(f"{settings['profile']}.{os.getpid()}.pstats")
        else:
            await worker.run()
    finally:
        await feed.aclose()
        await transport.aclose()


def load_class(reference: str) -> Any:
    """`package.module:Name` or `path/to/file.py:Name`: a candidate worker to compare."""
    where, name = reference.rsplit(":", 1)
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location("candidate_worker", where)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


# -- procrastinate ----------------------------------------------------------------------


def procrastinate_app(url: str, pool_size: int = 4) -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=url, min_size=pool_size, max_size=pool_size
        )
    )

    @app.task(name=PROCRASTINATE_TASK)
    async def noop() -> None:
        return None

    return app


async def _procrastinate(url: str, settings: dict[str, Any], ready: Any, go: Any) -> None:
    concurrency = int(settings["concurrency"])
    # A connection per job slot, one for LISTEN, one spare: connections never limit it.
    app = procrastinate_app(url, pool_size=concurrency + 2)
    async with app.open_async():
        await _until_go(ready, go)
        # Its own signal handlers stop it on SIGTERM, as `procrastinate worker` does.
        await app.run_worker_async(concurrency=concurrency, wait=True)


# -- pgqueuer ---------------------------------------------------------------------------


async def _pgqueuer(url: str, settings: dict[str, Any], ready: Any, go: Any) -> None:
    import asyncpg
    from pgqueuer import Queries, QueueManager
    from pgqueuer.db import AsyncpgDriver

    connection = await asyncpg.connect(dsn=url)
    qm = QueueManager(Queries(AsyncpgDriver(connection)))

    @qm.entrypoint(PGQUEUER_ENTRYPOINT)
    async def noop(job: Any) -> None:
        return None

    _on_sigterm(qm.shutdown.set)
    await _until_go(ready, go)
    try:
        await qm.run(batch_size=int(settings["batch_size"]), dequeue_timeout=timedelta(seconds=5))
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


# -- the ceilings: claim and complete on a plain table ----------------------------------

CEILING_SCHEMA = f"""
create table {CEILING_TABLE} (
  id bigint generated always as identity primary key,
  status text not null default 'pending',
  payload jsonb not null default '{{}}',
  locked_by text,
  started_at timestamptz,
  finished_at timestamptz
);
create index {CEILING_TABLE}_pending_idx on {CEILING_TABLE} (id) where status = 'pending';
"""

CEILING_CLAIM = f"""
update {CEILING_TABLE} j set status = 'processing', locked_by = %s, started_at = now()
 where j.id = any (array(select p.id from {CEILING_TABLE} p where p.status = 'pending'
                          order by p.id limit %s for update skip locked))
returning j.id
"""
CEILING_COMPLETE = f"""
update {CEILING_TABLE} set status = 'completed', finished_at = now()
 where id = any (%s) and status = 'processing' and locked_by = %s
"""


def _ceiling(url: str, settings: dict[str, Any], ready: Any, go: Any) -> None:
    """Claim `batch` items in one transaction, complete them in another, until none are
    left; psycopg prepares both statements after a few runs, as a bare loop would."""
    import psycopg

    batch = int(settings["batch"])
    me = f"ceiling-{os.getpid()}"
    with psycopg.connect(url, application_name="portraitkit-bench-ceiling") as conn:
        conn.execute("select 1")
        conn.commit()
        ready.put(os.getpid())
        go.wait()
        while True:
            ids = [r[0] for r in conn.execute(CEILING_CLAIM, (me, batch)).fetchall()]
            conn.commit()
            if not ids:
                break
            conn.execute(CEILING_COMPLETE, (ids, me))
            conn.commit()
        # Stay connected until told to stop: the parent reads the backend's CPU time.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        signal.sigwait({signal.SIGTERM})


# -- the wake-up floor: a bare LISTEN ---------------------------------------------------


async def _listener(url: str, ready: Any, go: Any) -> None:
    """On each notification on FLOOR_CHANNEL, read the server's clock (the first thing a
    woken worker does is start a transaction) and report (payload, timestamp)."""
    import psycopg

    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as listen,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as clock,
    ):
        await listen.execute(f"listen {FLOOR_CHANNEL}")
        await _until_go(ready, go)
        async for notify in listen.notifies():
            cur = await clock.execute("select clock_timestamp()")
            row = await cur.fetchone()
            assert row is not None
            ready.put((notify.payload, row[0]))
