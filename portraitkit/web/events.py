"""Live batch progress for every open page: one change feed per server process, fanned out.

The process listens once (LISTEN on direct Postgres, Realtime on Supabase). A change marks
its batch dirty; one reader re-reads each dirty batch that someone watches, once, as one of
its watchers (so RLS still decides what is read), and hands the result to every watcher of
that batch. The database works per changed batch, never per connected client, and a slow
client only ever misses intermediate states: each watcher keeps the latest one, not a queue.
A backstop re-reads every watched batch now and then, so a lost notification only delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from portraitkit.database.connection import listen_url
from portraitkit.errors import NotFound
from portraitkit.feeds import Feed, NotifyFeed, RealtimeFeed
from portraitkit.identity import SERVICE, open_client
from portraitkit.watch import BATCHES_CHANNEL
from portraitkit.web.backend import Backend
from portraitkit.web.schemas import BatchDetail

log = logging.getLogger("portraitkit.web")
BACKSTOP_SECONDS = 5.0


@dataclass(eq=False)
class Watcher:
    """One open event stream: the latest state of its batch, and a bell."""

    batch_id: str
    token: str
    claims: Mapping[str, Any]
    latest: BatchDetail | None = None
    gone: bool = False  # deleted (or no longer this user's) since the stream began
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, state: BatchDetail) -> None:
        self.latest = state
        self.changed.set()


class BatchEvents:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._watchers: dict[str, set[Watcher]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._feed: Feed | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.reads = 0  # batch reads done for watchers, for the load benchmark

    async def start(self) -> BatchEvents:
        self._tasks = [
            asyncio.create_task(self._reader(), name="batch-events-reader"),
            asyncio.create_task(self._backstop(), name="batch-events-backstop"),
        ]
        if self.backend.mode == "supabase":
            # In the background: an unreachable Realtime must not hold up the server's start.
            self._tasks.append(asyncio.create_task(self._realtime(), name="batch-events"))
        else:
            assert self.backend.database_url is not None
            url = listen_url(self.backend.settings, self.backend.database_url)
            self._feed = await NotifyFeed(url, BATCHES_CHANNEL, on_notify=self.mark).start()
        return self

    async def _realtime(self) -> None:
        """Realtime checks each subscriber's RLS, so the doorbell needs the service role
        (it only learns that some batch changed; reads still go as a watcher). Without the
        secret key the backstop alone finds every change."""
        if self.backend.settings.supabase_service_role_key is None:
            log.info("no secret key: batch events by the backstop only")
            return
        try:
            service = await open_client(self.backend.settings, SERVICE)
            self._closers.append(service.aclose)
            client = getattr(service.transport, "client", None)
            feed = await RealtimeFeed(client, table="generation_batches", event="UPDATE").start()
        except Exception as exc:  # a doorbell only: the backstop still finds every change
            log.warning("realtime unavailable, backstop only", extra={"error": str(exc)})
            return
        self._feed = feed
        while True:
            if await feed.wait(BACKSTOP_SECONDS):
                for batch_id in list(self._watchers):
                    self.mark(batch_id)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._feed is not None:
            await self._feed.aclose()
        for close in self._closers:
            await close()

    def mark(self, batch_id: str) -> None:
        if batch_id in self._watchers:
            self._dirty.add(batch_id)
            self._wake.set()

    @property
    def watchers(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    @contextlib.asynccontextmanager
    async def watch(
        self, batch_id: str, token: str, claims: Mapping[str, Any]
    ) -> AsyncIterator[Watcher]:
        watcher = Watcher(batch_id, token, claims)
        self._watchers.setdefault(batch_id, set()).add(watcher)
        try:
            yield watcher
        finally:
            watchers = self._watchers.get(batch_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[batch_id]

    async def read(self, batch_id: str, token: str, claims: Mapping[str, Any]) -> BatchDetail:
        self.reads += 1
        async with self.backend.client(token, claims) as client:
            return await self.backend.detail(client, batch_id)

    async def _reader(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for batch_id in dirty:
                watchers = list(self._watchers.get(batch_id, ()))
                if not watchers:
                    continue
                reader = watchers[-1]
                try:
                    state = await self.read(batch_id, reader.token, reader.claims)
                except NotFound:
                    for watcher in watchers:
                        watcher.gone = True
                        watcher.changed.set()
                    continue
                except Exception as exc:  # the watchers keep their last state; the backstop retries
                    log.info("batch read failed", extra={"batch": batch_id, "error": str(exc)})
                    continue
                for watcher in watchers:
                    watcher.publish(state)

    async def _backstop(self) -> None:
        while True:
            await asyncio.sleep(BACKSTOP_SECONDS)
            for batch_id in list(self._watchers):
                self.mark(batch_id)
