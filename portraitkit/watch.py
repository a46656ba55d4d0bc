"""Follow one batch until it ends: snapshots driven by the change feed, not a tight poll.

The feed is only a doorbell (see :mod:`portraitkit.feeds`): each ring means "read the
batch again", and a timeout (the backstop) re-reads anyway, so a lost notification costs
at most one backstop interval. Direct Postgres rings through LISTEN on
``portraitkit_batches`` (the payload is the batch id); Supabase through Realtime updates of
that one ``generation_batches`` row. A database outage only pauses the watch: reads are
retried (:func:`~portraitkit.retrying.retrying`) until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from uuid import UUID

from portraitkit.client import PortraitClient
from portraitkit.database.connection import listen_url
from portraitkit.errors import PortraitkitError
from portraitkit.feeds import Feed, NotifyFeed, PollingFeed, RealtimeFeed
from portraitkit.models import Batch
from portraitkit.retrying import retrying
from portraitkit.session import database_url
from portraitkit.settings import Settings

log = logging.getLogger("portraitkit.watch")

BATCHES_CHANNEL = "portraitkit_batches"
BACKSTOP_SECONDS = 2.0
MIN_INTERVAL_SECONDS = 0.05  # a burst of rings costs one read, not one per ring
REALTIME_START_SECONDS = 3.0
WORKERS_CHECK_SECONDS = 5.0
NO_WORKER = "no worker is running: the batch waits until one starts (portraitkit worker)"
WORKER_BACK = "a worker is running"


async def watch_batch(
    client: PortraitClient,
    batch_id: UUID | str,
    feed: Feed,
    *,
    backstop: float = BACKSTOP_SECONDS,
    min_interval: float = MIN_INTERVAL_SECONDS,
    on_note: Callable[[str], None] | None = None,
) -> AsyncIterator[Batch]:
    """Yield the batch now, then each time it changes; the last snapshot is the final one.

    The first read fails as any command's would, so a wrong setting shows at once; after
    it, a database outage is waited out however long it lasts, as the worker waits it out
    (cancelling the watch, e.g. Ctrl-C, still ends it at once). Raises
    :class:`~portraitkit.errors.BatchNotFound` if the batch is not (or no longer) the
    user's, e.g. deleted while watched.

    ``on_note`` hears :data:`NO_WORKER` when the batch has items waiting and no worker is
    live (checked every few seconds while so), then :data:`WORKER_BACK` once one is.
    """
    last: Batch | None = None
    workers = _WorkerPresence(client, on_note) if on_note else None
    while True:
        read_at = time.monotonic()
        if last is None:
            batch = await client.get_batch(batch_id)
        else:
            batch = await _reread(client, batch_id)
        if batch != last:
            yield batch
            last = batch
        if batch.status.is_final:
            return
        if workers is not None:
            await workers.check(batch)
        await feed.wait(backstop)
        pause = min_interval - (time.monotonic() - read_at)
        if pause > 0:
            await asyncio.sleep(pause)


class _WorkerPresence:
    """Whether anybody will work on a waiting batch: a watch would otherwise wait forever
    with no hint when no worker runs."""

    def __init__(self, client: PortraitClient, on_note: Callable[[str], None]) -> None:
        self._client = client
        self._on_note = on_note
        self._checked_at = -WORKERS_CHECK_SECONDS
        self._missing = False

    async def check(self, batch: Batch) -> None:
        waiting = batch.pending_count > 0 and batch.processing_count == 0
        if not (waiting or self._missing):
            return
        if time.monotonic() - self._checked_at < WORKERS_CHECK_SECONDS:
            return
        self._checked_at = time.monotonic()
        try:
            missing = await self._client.workers_online() == 0
        except PortraitkitError:  # a hint only: never the reason a watch fails
            return
        if missing != self._missing:
            self._missing = missing
            self._on_note(NO_WORKER if missing else WORKER_BACK)


async def _reread(client: PortraitClient, batch_id: UUID | str) -> Batch:
    """The batch, read again as soon as the database answers."""
    async for attempt in retrying(f"reading batch {batch_id}"):
        with attempt:
            batch = await client.get_batch(batch_id)
    return batch  # the loop ends only once a read has succeeded


@contextlib.asynccontextmanager
async def batch_feed(
    settings: Settings, client: PortraitClient, batch_id: UUID | str
) -> AsyncIterator[Feed]:
    """The doorbell for one batch on whichever database the settings name.

    If Realtime cannot be subscribed within a few seconds, the watch still works on the
    backstop alone.
    """
    feed: Feed
    if settings.mode == "supabase":
        realtime = RealtimeFeed(
            getattr(client.transport, "client", None),
            table="generation_batches",
            event="UPDATE",
            filter=f"id=eq.{batch_id}",
        )
        try:
            # Bounded: supabase-py retries an unreachable Realtime for many seconds.
            feed = await asyncio.wait_for(realtime.start(), REALTIME_START_SECONDS)
        except Exception as exc:  # a doorbell only: the backstop still finds every change
            log.warning("realtime unavailable, polling only: %s", exc or type(exc).__name__)
            await realtime.aclose()
            feed = PollingFeed()
    else:
        url = await asyncio.to_thread(database_url, settings)
        feed = await NotifyFeed(
            listen_url(settings, url), BATCHES_CHANNEL, payload=str(batch_id)
        ).start()
    try:
        yield feed
    finally:
        await feed.aclose()
