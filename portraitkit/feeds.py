"""Change feeds: doorbells that say "something changed", never the truth itself.

The worker and ``batches watch`` wait on a feed instead of polling tightly; the tables stay
the only source of truth, so a missed or duplicated event costs at most one poll interval.
Direct Postgres rings through LISTEN/NOTIFY (on a session connection: a transaction-mode
pooler cannot carry it); Supabase through Realtime ``postgres_changes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Protocol

import psycopg

log = logging.getLogger("portraitkit.feeds")

GENERATIONS_CHANNEL = "portraitkit_generations"


class Feed(Protocol):
    async def wait(self, timeout: float) -> bool:
        """Return True when rung, False after ``timeout`` seconds of silence."""
        ...

    async def aclose(self) -> None: ...


class _Doorbell:
    """The part every feed shares: an event rung by the listener and consumed by wait()."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()

    def ring(self) -> None:
        self._rung.set()

    async def wait(self, timeout: float) -> bool:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
        # that arrives as the bell rings, and the waiter would then carry on (Ctrl-C lost).
        try:
            async with asyncio.timeout(timeout):
                await self._rung.wait()
        except TimeoutError:
            return False
        self._rung.clear()
        return True


class PollingFeed(_Doorbell):
    """No feed at all: every wait runs to its timeout (unless rung by the process itself)."""

    async def aclose(self) -> None:
        return None


class NotifyFeed(_Doorbell):
    """LISTEN on a channel over a dedicated session connection, reconnecting with backoff.

    ``payload``, when given, rings only for notifications carrying it (e.g. one batch's id
    on ``portraitkit_batches``), so a watcher of one batch ignores everyone else's.
    """

    FIRST_RETRY_SECONDS = 0.2  # doubled after each failed try, up to max_backoff

    def __init__(
        self,
        conninfo: str,
        channel: str = GENERATIONS_CHANNEL,
        *,
        max_backoff: float = 10.0,
        payload: str | None = None,
    ):
        super().__init__()
        self.conninfo = conninfo
        self.channel = channel
        self.payload = payload
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> NotifyFeed:
        self._task = asyncio.create_task(self._listen(), name=f"listen:{self.channel}")
        return self

    async def _listen(self) -> None:
        delay = self.FIRST_RETRY_SECONDS
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, application_name="portraitkit-listen"
                ) as conn:
                    await conn.execute(
                        psycopg.sql.SQL("listen {}").format(psycopg.sql.Identifier(self.channel))
                    )
                    self.connected.set()
                    self.ring()  # anything may have happened while we were away
                    delay = self.FIRST_RETRY_SECONDS
                    async for notify in conn.notifies():
                        if self.payload is None or notify.payload == self.payload:
                            self.ring()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: wait, then listen again
                self.connected.clear()
                # A warning once per outage (a wrong PORTRAITKIT_LISTEN_URL shows at once),
                # the retries only with -v.
                log.log(
                    logging.WARNING if delay == self.FIRST_RETRY_SECONDS else logging.INFO,
                    "feed lost",
                    extra={"event": "feed_lost", "error": str(exc), "retry_in": delay},
                )
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.max_backoff)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RealtimeFeed(_Doorbell):
    """Supabase Realtime ``postgres_changes`` on a table, through supabase-py's async client.

    supabase-py reconnects and rejoins the channel by itself, but gives up after a few
    tries (and its issue tracker knows of lost subscriptions), so a watchdog keeps trying,
    with backoff, once it has: a long Realtime outage then costs polls, never the feed.
    Only a doorbell either way: the worker polls as well.
    """

    def __init__(
        self,
        client: Any,
        table: str = "generations",
        event: str = "INSERT",
        filter: str | None = None,
        *,
        check_seconds: float = 10.0,
        max_backoff: float = 60.0,
    ) -> None:
        super().__init__()
        self._client = client
        self._table = table
        self._event = event
        self._filter = filter
        self._check_seconds = check_seconds
        self._max_backoff = max_backoff
        self._channel: Any = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> RealtimeFeed:
        channel = self._client.channel(f"portraitkit-{self._table}-{random.getrandbits(32):x}")
        kwargs: dict[str, Any] = {
            "schema": "public",
            "table": self._table,
            "callback": lambda _payload: self.ring(),
        }
        if self._filter:
            kwargs["filter"] = self._filter
        channel.on_postgres_changes(self._event, **kwargs)
        await channel.subscribe()
        self._channel = channel
        self._watchdog = asyncio.create_task(self._watch(), name=f"realtime:{self._table}")
        return self

    async def _watch(self) -> None:
        realtime = self._client.realtime
        delay = self._check_seconds
        while True:
            await asyncio.sleep(delay * (0.8 + random.random() * 0.4))
            if realtime.is_connected:
                delay = self._check_seconds
                continue
            try:
                await realtime.connect()  # rejoins the errored channel once connected
            except Exception as exc:
                delay = min(delay * 2, self._max_backoff)
                log.info(
                    "realtime lost",
                    extra={"event": "feed_lost", "error": str(exc), "retry_in": delay},
                )
            else:
                delay = self._check_seconds
                self.ring()  # anything may have happened while we were away

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._client.remove_channel(self._channel)
