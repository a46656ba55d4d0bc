"""Assemble a worker from settings: the service-role transport, storage, wake-up feed and
generators for whichever database the settings name, and run it as a process would.

Kept apart from worker.py so the loop itself knows nothing of settings or signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from portraitkit.auth import issue_service_token
from portraitkit.database.connection import listen_url
from portraitkit.errors import ConfigurationError
from portraitkit.feeds import Feed, NotifyFeed, PollingFeed, RealtimeFeed
from portraitkit.generators import Generator, configured_generators
from portraitkit.session import database_url
from portraitkit.settings import Settings
from portraitkit.storage import LocalStorage
from portraitkit.transports.postgres import PostgresTransport, make_pool
from portraitkit.worker import Worker, WorkerOptions, WorkerStats

log = logging.getLogger("portraitkit.worker")


@contextlib.asynccontextmanager
async def open_worker(
    settings: Settings,
    options: WorkerOptions | None = None,
    generators: Callable[[str], Generator] | None = None,
) -> AsyncIterator[Worker]:
    """A ready worker for the configured database; everything it opened is closed after."""
    options = options or WorkerOptions()
    if settings.generator and options.generator is None:
        options = WorkerOptions(**{**vars(options), "generator": settings.generator})
    generators = generators or configured_generators(settings)
    feed: Feed
    if settings.mode == "supabase":
        from portraitkit.transports.supabase import SupabaseTransport

        if settings.supabase_url is None or settings.supabase_service_role_key is None:
            raise ConfigurationError("The worker on Supabase needs SUPABASE_SERVICE_ROLE_KEY.")
        transport: Any = await SupabaseTransport.service(
            settings.supabase_url, settings.supabase_service_role_key.get_secret_value()
        )
        storage: Any = transport.storage()
        try:
            feed = await RealtimeFeed(transport.client).start()
        except Exception as exc:  # realtime is a doorbell: polling still finds the work
            log.warning(
                "realtime unavailable, polling only",
                extra={"event": "feed_lost", "error": str(exc)},
            )
            feed = PollingFeed()
    else:
        url = await asyncio.to_thread(database_url, settings)
        secret = settings.jwt_secret_value()
        token = issue_service_token(secret)
        pool = make_pool(url, max_size=4)
        await pool.open()
        transport = PostgresTransport(pool, lambda: token, secret, owns_pool=True)
        storage = LocalStorage(settings.state_dir / "storage")
        feed = await NotifyFeed(listen_url(settings, url)).start()
    try:
        yield Worker(transport, storage, generators, feed=feed, options=options)
    finally:
        await feed.aclose()
        await transport.aclose()


async def run_worker(
    settings: Settings,
    options: WorkerOptions | None = None,
    *,
    once: bool = False,
    generators: Callable[[str], Generator] | None = None,
) -> WorkerStats:
    """Run until SIGTERM/SIGINT (or, with ``once``, until the queue is empty)."""
    async with open_worker(settings, options, generators) as worker:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            return await worker.run(once=once)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
