"""portraitkit.retrying: which errors pass, how long a retry goes on, whose word sets the wait."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from tenacity import AsyncRetrying, wait_fixed

from portraitkit import errors
from portraitkit.retrying import is_transient, retry_after_or, retrying

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeSleep:
    """Records the waits instead of waiting them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(float(seconds))


# One SQLSTATE of each class a database call can meet, and whether trying again may help.
SQLSTATES = {
    "08000": True,  # connection_exception
    "08006": True,  # connection_failure
    "08P01": True,  # protocol_violation (class 08: the connection, not the call)
    "22P02": False,  # invalid_text_representation (data exception)
    "23505": False,  # unique_violation (integrity constraint)
    "25P02": False,  # in_failed_sql_transaction
    "28P01": False,  # invalid_password
    "2F005": False,  # function_executed_no_return_statement
    "39P01": False,  # trigger_protocol_violated
    "40001": True,  # serialization_failure: rolled back
    "40P01": True,  # deadlock_detected: rolled back
    "40002": False,  # transaction_integrity_constraint_violation
    "42501": False,  # insufficient_privilege
    "42883": False,  # undefined_function
    "53100": False,  # disk_full
    "53300": True,  # too_many_connections
    "54000": False,  # program_limit_exceeded
    "55000": False,  # object_not_in_prerequisite_state
    "55P03": True,  # lock_not_available (lock_timeout)
    "57014": True,  # query_canceled (statement_timeout)
    "57P01": True,  # admin_shutdown
    "57P02": True,  # crash_shutdown
    "57P03": True,  # cannot_connect_now (starting up)
    "58030": False,  # io_error
    "F0000": False,  # config_file_error
    "HV000": False,  # fdw_error
    "P0001": False,  # raise_exception (the contract's own errors)
    "XX000": False,  # internal_error
}


@pytest.mark.parametrize(("sqlstate", "transient"), SQLSTATES.items(), ids=list(SQLSTATES))
def test_a_database_error_is_transient_by_its_sqlstate(sqlstate: str, transient: bool) -> None:
    error = psycopg.errors.lookup(sqlstate)("the server said no")
    assert error.sqlstate == sqlstate
    assert is_transient(error) is transient


@pytest.mark.parametrize(("sqlstate", "transient"), SQLSTATES.items(), ids=list(SQLSTATES))
def test_the_typed_error_of_a_sqlstate_is_as_transient_as_the_raw_one(
    sqlstate: str, transient: bool
) -> None:
    """What the transports raise (errors.py's mapping) is judged as psycopg's error is."""
    error = errors.error_from_postgres(sqlstate, "the server said no", None, None)
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.OperationalError("connection refused"), True),  # no SQLSTATE: no connection
        (PoolTimeout("couldn't get a connection after 10.00 sec"), True),
        (psycopg.InterfaceError("the connection is closed"), False),  # our misuse
        (errors.DatabaseUnavailable("gone"), True),
        (errors.DatabaseBusy("deadlock"), True),
        (errors.TransportTimeout("no answer"), True),
        (errors.EmbeddedError("the local server would not start"), False),
        (errors.BatchNotFound("no such batch"), False),
        (errors.InsufficientCredits("too few credits"), False),
        (ValueError("a bug"), False),
        (asyncio.CancelledError(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_errors_without_a_sqlstate_are_transient_only_if_the_database_was_out_of_reach(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient


Call = Callable[[], Awaitable[str]]


def failing(*raised: BaseException) -> tuple[list[BaseException], Call]:
    """A call that raises ``raised`` one after the other, then answers "done"; and the
    list of what it raised so far."""
    seen: list[BaseException] = []

    async def call() -> str:
        if len(seen) < len(raised):
            seen.append(raised[len(seen)])
            raise seen[-1]
        return "done"

    return seen, call


async def run(retry: AsyncRetrying, call: Call) -> str:
    """The call made as every retrying loop in portraitkit makes it."""
    result = ""
    async for attempt in retry:
        with attempt:
            result = await call()
    return result


async def test_a_transient_error_is_retried_until_the_call_works() -> None:
    sleep = FakeSleep()
    seen, call = failing(errors.DatabaseUnavailable("down"), errors.DatabaseBusy("deadlock"))

    assert await run(retrying("call", attempts=3, sleep=sleep), call) == "done"
    assert len(seen) == 2
    assert len(sleep.waits) == 2


async def test_retrying_stops_after_its_attempts_and_raises_the_last_error() -> None:
    sleep = FakeSleep()
    errors_raised = [errors.DatabaseUnavailable(f"down {n}") for n in range(5)]
    seen, call = failing(*errors_raised)

    with pytest.raises(errors.DatabaseUnavailable) as caught:
        await run(retrying("call", attempts=3, sleep=sleep), call)

    assert caught.value is errors_raised[2]
    assert len(seen) == 3
    assert len(sleep.waits) == 2


async def test_retrying_stops_after_its_seconds_and_raises_the_last_error() -> None:
    seen, call = failing(*[errors.DatabaseUnavailable(f"down {n}") for n in range(1000)])
    started = time.monotonic()

    with pytest.raises(errors.DatabaseUnavailable) as caught:
        await run(retrying("call", seconds=0.3, wait=wait_fixed(0.05)), call)

    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.6
    assert caught.value is seen[-1]
    assert 5 <= len(seen) <= 8  # one try every 50 ms for 300 ms


async def test_an_error_that_does_not_pass_is_raised_at_once() -> None:
    sleep = FakeSleep()
    seen, call = failing(errors.BatchNotFound("no such batch"))

    with pytest.raises(errors.BatchNotFound):
        await run(retrying("call", attempts=5, sleep=sleep), call)

    assert (len(seen), sleep.waits) == (1, [])


async def test_waits_grow_exponentially_up_to_the_maximum() -> None:
    sleep = FakeSleep()
    _seen, call = failing(*[errors.DatabaseUnavailable("down") for _ in range(7)])

    await run(retrying("call", initial=0.1, max_delay=0.5, sleep=sleep), call)

    # Full jitter: each wait is random, up to 0.1, 0.2, 0.4, then 0.5 for good.
    for wait, ceiling in zip(sleep.waits, [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5], strict=True):
        assert 0 <= wait <= ceiling


async def test_without_limits_retrying_ends_only_when_cancelled() -> None:
    """How Ctrl-C ends `batches watch` during an outage: cancellation is never retried."""
    _seen, call = failing(*[errors.DatabaseUnavailable("down") for _ in range(10_000)])
    task = asyncio.create_task(run(retrying("call", initial=0.01, max_delay=0.01), call))
    await asyncio.sleep(0.2)
    assert not task.done()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)


class Throttled(Exception):
    """An answer that may say how long to wait (as HTTP's ``Retry-After`` does)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"throttled, retry after {retry_after}")
        self.retry_after = retry_after


def throttled_wait() -> Any:
    return retry_after_or(
        wait_fixed(0.25),
        lambda error: error.retry_after if isinstance(error, Throttled) else None,
    )


async def test_retry_after_sets_the_wait_when_the_error_carries_one() -> None:
    sleep = FakeSleep()
    _seen, call = failing(Throttled(3.0), Throttled(None), Throttled(0.0))
    retry = retrying(
        "call",
        attempts=4,
        retry_on=lambda error: isinstance(error, Throttled),
        wait=throttled_wait(),
        sleep=sleep,
    )

    assert await run(retry, call) == "done"
    assert sleep.waits == [3.0, 0.25, 0.0]  # the server's word, else the backoff


async def test_the_first_failure_of_an_outage_is_a_warning_and_the_rest_are_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portraitkit.retrying")
    _seen, call = failing(*[errors.DatabaseUnavailable("down") for _ in range(3)])

    await run(retrying("reading the batch", sleep=FakeSleep()), call)

    records = [r for r in caplog.records if r.name == "portraitkit.retrying"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "reading the batch failed, retrying"),
        ("INFO", "reading the batch failed, retrying"),
        ("INFO", "reading the batch failed, retrying"),
    ]
    assert [getattr(r, "attempt", None) for r in records] == [1, 2, 3]
    assert {getattr(r, "event", None) for r in records} == {"retry"}
