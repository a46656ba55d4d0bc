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

from portraitkit.database.connection import listen_url
from portraitkit.feeds import Feed, NotifyFeed, PollingFeed, RealtimeFeed
from portraitkit.generators import Generator, configured_generators
from portraitkit.identity import SERVICE, open_client
from portraitkit.session import database_url
from portraitkit.settings import Settings
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
    client = await open_client(settings, SERVICE, pool_size=4)
    transport, storage = client.transport, client.storage
    assert storage is not None
    feed: Feed
    if settings.mode == "supabase":
        try:
            feed = await RealtimeFeed(getattr(transport, "client", None)).start()
        except Exception as exc:  # realtime is a doorbell: polling still finds the work
            log.warning(
                "realtime unavailable, polling only",
                extra={"event": "feed_lost", "error": str(exc)},
            )
            feed = PollingFeed()
    else:
        url = await asyncio.to_thread(database_url, settings)
        feed = await NotifyFeed(listen_url(settings, url)).start()
    try:
        yield Worker(transport, storage, generators, feed=feed, options=options)
    finally:
        await feed.aclose()
        await client.aclose()


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
