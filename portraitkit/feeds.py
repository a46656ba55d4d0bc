"""Change feeds: doorbells that say "something changed", never the truth itself.

The worker and ``batches watch`` wait on a feed instead of polling tightly; the tables stay
the only source of truth, so a missed or duplicated event costs at most one poll interval.
Direct Postgres rings through LISTEN/NOTIFY (on a session connection: a transaction-mode
pooler cannot carry it); Supabase through Realtime ``postgres_changes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from realtime.types import RealtimeSubscribeStates

from portraitkit.errors import (
    DatabaseUnavailable,
    NotAllowed,
    NotAuthenticated,
    PortraitkitError,
    TransportTimeout,
    realtime_refusal,
)
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
    outage then costs polls, never the feed. A channel the server closes (``phx_close``:
    a token that expired, a restart) is gone for supabase-py; the watchdog joins a new one,
    with the same backoff. Only a doorbell either way: the worker polls as well.

    A refused join is an error, never a silent wait: :meth:`start` raises
    :class:`NotAuthenticated` when Realtime refuses the token (expired, badly signed, not a
    JWT) and :class:`NotAllowed` when the channel's policies do, which no retry changes, and
    :class:`DatabaseUnavailable` or :class:`TransportTimeout` when it cannot be joined now.
    If a rejoin is refused for good later, the feed ends: the next :meth:`wait` raises that
    error once, and later waits only time out, as a :class:`PollingFeed`'s do.
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
        self._lost = asyncio.Event()  # the server closed the channel or refused its token
        self._lost_because: PortraitkitError | None = None
        self._closing = False
        self.error: PortraitkitError | None = None  # what ended the feed, if anything
        self._error_raised = False

    async def start(self) -> RealtimeFeed:
        self._channel = await self._join()
        self._watchdog = asyncio.create_task(self._watch(), name=f"realtime:{self._table}")
        return self

    async def wait(self, timeout: float) -> bool:
        self._raise_error_once()
        rung = await super().wait(timeout)
        self._raise_error_once()
        return rung

    def _raise_error_once(self) -> None:
        if self.error is not None and not self._error_raised:
            self._error_raised = True
            raise self.error

    # -- joining ----------------------------------------------------------------------------

    async def _join(self) -> Any:
        """A new channel, joined; the typed error of a refused or unanswered join."""
        channel = self._client.channel(f"portraitkit-{self._table}-{random.getrandbits(32):x}")
        kwargs: dict[str, Any] = {
            "schema": "public",
            "table": self._table,
            "callback": lambda _payload: self.ring(),
        }
        if self._filter:
            kwargs["filter"] = self._filter
        channel.on_postgres_changes(self._event, **kwargs)
        joined: asyncio.Future[tuple[str, Exception | None]] = (
            asyncio.get_running_loop().create_future()
        )

        def on_state(state: str, error: Exception | None) -> None:
            if not joined.done():
                joined.set_result((state, error))
            elif channel is self._channel:
                self._on_state(state, error)

        try:
            await channel.subscribe(on_state)
            # Newer supabase-py returns once the join is answered; older ones at once.
            async with asyncio.timeout(float(channel.timeout) + 1.0):
                state, error = await joined
        except BaseException:
            await self._drop(channel)
            raise
        if state != RealtimeSubscribeStates.SUBSCRIBED:
            # Removed, so supabase-py does not go on rejoining it behind our back.
            await self._drop(channel)
            raise _join_failure(state, error)
        return channel

    def _on_state(self, state: str, error: Exception | None) -> None:
        """The joined channel's later states, as supabase-py reports them."""
        if self._closing:
            return
        if state == RealtimeSubscribeStates.SUBSCRIBED:
            self.ring()  # rejoined after a reconnect: anything may have happened meanwhile
        elif state == RealtimeSubscribeStates.CLOSED:
            self._lose(DatabaseUnavailable("Realtime closed the channel."))
        elif state == RealtimeSubscribeStates.CHANNEL_ERROR:
            refusal = realtime_refusal(_error_payload(error))
            if isinstance(refusal, NotAuthenticated | NotAllowed):
                self._lose(refusal)  # supabase-py would rejoin with the same token forever
        # TIMED_OUT and other errors: supabase-py rejoins by itself.

    def _lose(self, because: PortraitkitError) -> None:
        self._lost_because = because
        self._lost.set()

    async def _drop(self, channel: Any) -> None:
        """Leave ``channel`` if supabase-py still holds it (a closed one it has let go)."""
        if channel is None or channel not in self._client.realtime.channels.values():
            return
        with contextlib.suppress(Exception):
            await self._client.remove_channel(channel)

    # -- the watchdog -----------------------------------------------------------------------

    async def _watch(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_seconds * (0.8 + random.random() * 0.4)):
                        await self._lost.wait()
                if self._lost.is_set():
                    await self._rejoin()
                elif not self._client.realtime.is_connected:
                    await self._reconnect()
                else:
                    continue
                self.ring()  # anything may have happened while we were away
        except (NotAuthenticated, NotAllowed) as exc:
            log.error(
                "realtime refused the channel, the feed has stopped",
                extra={"event": "feed_refused", "error": str(exc)},
            )
            self.error = exc
            self.ring()  # wakes a waiter, whose wait() then raises the error

    async def _reconnect(self) -> None:
        async for attempt in retrying(
            "realtime reconnect",
            initial=self._check_seconds,
            max_delay=self._max_backoff,
            retry_on=_any_error,
        ):
            with attempt:
                await self._client.realtime.connect()  # rejoins the errored channel too

    async def _rejoin(self) -> None:
        """A new channel for the lost one, with backoff; a refusal no retry can change (the
        token, the policies) ends the feed. A channel lost to its token is joined once more
        first: the client may hold a refreshed token by now."""
        log.warning(
            "realtime channel lost, joining again",
            extra={"event": "feed_lost", "error": str(self._lost_because)},
        )
        self._lost.clear()
        lost, self._channel = self._channel, None
        await self._drop(lost)
        async for attempt in retrying(
            "realtime rejoin",
            initial=self._check_seconds,
            max_delay=self._max_backoff,
            retry_on=_worth_rejoining,
        ):
            with attempt:
                self._channel = await self._join()

    async def aclose(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._drop(self._channel)


def _error_payload(error: Exception | None) -> dict[str, Any]:
    """supabase-py hands a refusal over as ``Exception(json.dumps(payload))``."""
    try:
        payload = json.loads(str(error))
    except ValueError:
        return {"reason": str(error)}
    return payload if isinstance(payload, dict) else {"reason": str(payload)}


def _join_failure(state: str, error: Exception | None) -> PortraitkitError:
    if state == RealtimeSubscribeStates.TIMED_OUT:
        return TransportTimeout("Realtime did not answer the channel's join in time.")
    if state == RealtimeSubscribeStates.CHANNEL_ERROR:
        return realtime_refusal(_error_payload(error))
    return DatabaseUnavailable("Realtime closed the channel while it was being joined.")


def _worth_rejoining(exc: BaseException) -> bool:
    return _any_error(exc) and not isinstance(exc, NotAuthenticated | NotAllowed)


def _any_error(exc: BaseException) -> bool:
    """A feed retries whatever failed: it is only a doorbell, and the caller polls anyway.
    Cancellation (a BaseException) still ends it at once."""
    return isinstance(exc, Exception)
