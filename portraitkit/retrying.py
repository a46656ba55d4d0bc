"""One way to retry: exponential backoff with full jitter (tenacity), for errors that pass.

Every loop that waits out a database outage, a deadlock or a rate limit uses
:func:`retrying`, so delays, limits and logging are the same everywhere. What counts as
transient is decided once, in :func:`is_transient`: a dropped or refused connection, a
serialization failure or deadlock (the transaction was rolled back, so trying again is
safe), a lock or statement timeout, an administrator's shutdown, a full connection slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import WaitBaseT

from portraitkit.errors import TRANSIENT_SQLSTATES, DatabaseUnavailable, EmbeddedError

log = logging.getLogger("portraitkit.retrying")


def is_transient_sqlstate(sqlstate: str | None) -> bool:
    return bool(sqlstate) and (sqlstate in TRANSIENT_SQLSTATES or str(sqlstate).startswith("08"))


def is_transient(exc: BaseException) -> bool:
    """True for an error that may pass if the same call is made again a little later."""
    if isinstance(exc, EmbeddedError):
        return False  # the local server would not start: trying again changes nothing
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:
            # No answer from the server to judge by: the connection failed or broke.
            return isinstance(exc, psycopg.OperationalError)
        # psycopg makes an OperationalError of much that does not pass (a program limit,
        # an object in the wrong state, a failed trigger protocol): the SQLSTATE decides.
        return is_transient_sqlstate(exc.sqlstate)
    return False


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        # The first failure of an outage is a warning (it may be a wrong setting); the
        # retries that follow are routine.
        log.log(
            logging.WARNING if state.attempt_number == 1 else logging.INFO,
            "%s failed, retrying",
            what,
            extra={
                "event": "retry",
                "call": what,
                "attempt": state.attempt_number,
                "retry_in": round(delay, 3),
                "error": str(error),
            },
        )

    return before_sleep


def retrying(
    what: str,
    *,
    attempts: int | None = None,
    seconds: float | None = None,
    initial: float = 0.2,
    max_delay: float = 10.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
    wait: WaitBaseT | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncRetrying:
    """Retry ``what`` on transient errors: at most ``attempts`` tries and ``seconds`` in
    all (neither given: until it works or the task is cancelled), then the last error is
    raised as it was. Use as ``async for attempt in retrying(...): with attempt: ...``.
    ``sleep`` is for tests that keep a fake clock."""
    limits: list[stop_base] = []
    if attempts is not None:
        limits.append(stop_after_attempt(attempts))
    if seconds is not None:
        limits.append(stop_after_delay(seconds))
    stop: stop_base = stop_any(*limits) if limits else stop_never
    return AsyncRetrying(
        sleep=sleep,
        retry=retry_if_exception(retry_on),
        wait=wait or wait_random_exponential(multiplier=initial, max=max_delay),
        stop=stop,
        before_sleep=_log_retry(what),
        reraise=True,
    )


def retry_after_or(
    fallback: WaitBaseT, retry_after: Callable[[BaseException], float | None]
) -> Any:
    """A wait that honours the server's word (``Retry-After``) when the error carries one,
    and otherwise waits as ``fallback`` would."""

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = retry_after(error) if error is not None else None
        return asked if asked is not None else float(fallback(state))

    return wait
