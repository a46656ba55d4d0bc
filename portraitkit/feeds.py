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
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from portraitkit.retrying import retrying

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
    on ``portraitkit_batches``), so a watcher of one batch ignores everyone else's;
    ``on_notify`` is handed every notification's payload (a server fanning them out).
    """

    def __init__(
        self,
        conninfo: str,
        channel: str = GENERATIONS_CHANNEL,
        *,
        max_backoff: float = 10.0,
        payload: str | None = None,
        on_notify: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self.conninfo = conninfo
        self.channel = channel
        self.payload = payload
        self.on_notify = on_notify
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> NotifyFeed:
        self._task = asyncio.create_task(self._listen(), name=f"listen:{self.channel}")
        return self

    async def _listen(self) -> None:
        """One turn per connection: connect (through any outage), then ring until it drops."""
        while True:
            conn = await self._connect()
            try:
                async with conn:
                    self.connected.set()
                    self.ring()  # anything may have happened while we were away
                    async for notify in conn.notifies():
                        if self.on_notify is not None:
                            self.on_notify(notify.payload)
                        if self.payload is None or notify.payload == self.payload:
                            self.ring()
            except Exception as exc:  # the database went away: listen again once it is back
                log.warning("feed lost", extra={"event": "feed_lost", "error": str(exc)})
            self.connected.clear()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """A connection that LISTENs on the channel; retried until the database answers (a
        wrong PORTRAITKIT_LISTEN_URL shows as the first retry's warning)."""
        async for attempt in retrying(
            f"listen on {self.channel}", max_delay=self.max_backoff, retry_on=_any_error
        ):
            with attempt:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, application_name="portraitkit-listen"
                )
                try:
                    await conn.execute(
                        psycopg.sql.SQL("listen {}").format(psycopg.sql.Identifier(self.channel))
                    )
                except BaseException:
                    await conn.close()
                    raise
        return conn  # the loop ends only once an attempt has succeeded

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RealtimeFeed(_Doorbell):
    """Supabase Realtime ``postgres_changes`` on a table, through supabase-py's async client.

    supabase-py reconnects and rejoins the channel by itself, but gives up after a few
    tries (and its issue tracker knows of lost subscriptions), so a watchdog keeps trying
    (:func:`~portraitkit.retrying.retrying`, without limit) once it has: a long Realtime
    outage then costs polls, never the feed. Only a doorbell either way: the worker polls
    as well.
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
        while True:
            await asyncio.sleep(self._check_seconds * (0.8 + random.random() * 0.4))
            if realtime.is_connected:
                continue
            async for attempt in retrying(
                "realtime reconnect",
                initial=self._check_seconds,
                max_delay=self._max_backoff,
                retry_on=_any_error,
            ):
                with attempt:
                    await realtime.connect()  # rejoins the errored channel once connected
            self.ring()  # anything may have happened while we were away

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._client.remove_channel(self._channel)


def _any_error(exc: BaseException) -> bool:
    """A feed retries whatever failed: it is only a doorbell, and the caller polls anyway.
    Cancellation (a BaseException) still ends it at once."""
    return isinstance(exc, Exception)
