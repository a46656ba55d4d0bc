"""When the direct transport sends a call again: a retry-safe call that the server rolled
back for a reason that passes (here a lock timeout) is resent until it goes through; a call
not safe to repeat is never resent; and a pool that found no connection in its own timeout
is not waited on again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from portraitkit import errors
from portraitkit.auth import create_local_user
from portraitkit.session import LocalTokens
from portraitkit.transports.base import RetryPolicy
from portraitkit.transports.postgres import PostgresTransport, make_pool

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-transport-retry-test-secret-32-bytes-or-more"
PATIENT = RetryPolicy(attempts=20, base_delay=0.02, max_delay=0.05)
LOCK_SECONDS = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def transport(db_url: str) -> AsyncIterator[PostgresTransport]:
    """A user's transport whose statements give up after 50 ms waiting for a lock."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", 10)
    pool = make_pool(make_conninfo(db_url, options="-c lock_timeout=50ms"), max_size=2)
    await pool.open(wait=True)
    yield PostgresTransport(pool, LocalTokens(SECRET, user), SECRET, retry=PATIENT)
    await pool.close()


@pytest.fixture
async def batches_locked(db_url: str) -> AsyncIterator[None]:
    """Another session holds generation_batches exclusively for LOCK_SECONDS."""
    conn = await psycopg.AsyncConnection.connect(db_url)
    await conn.execute("lock table public.generation_batches in access exclusive mode")

    async def release() -> None:
        await asyncio.sleep(LOCK_SECONDS)
        await conn.commit()

    releasing = asyncio.create_task(release())
    yield
    await releasing
    await conn.close()


async def test_a_retry_safe_read_blocked_by_a_lock_is_resent_until_it_goes_through(
    transport: PostgresTransport, batches_locked: None
) -> None:
    started = time.monotonic()

    page = await transport.rpc("list_batches", {"page_size": 5}, retry_safe=True)

    assert page["items"] == []
    assert time.monotonic() - started >= LOCK_SECONDS - 0.05  # it waited the lock out


async def test_a_call_not_safe_to_repeat_fails_at_once_on_a_lock_timeout(
    transport: PostgresTransport, batches_locked: None
) -> None:
    started = time.monotonic()

    with pytest.raises(errors.DatabaseBusy) as caught:
        await transport.rpc("list_batches", {"page_size": 5})

    assert caught.value.details["sqlstate"] == "55P03"
    assert time.monotonic() - started < LOCK_SECONDS / 2


async def test_a_pool_with_no_connection_to_give_is_not_waited_on_twice(db_url: str) -> None:
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=1, timeout=0.3, open=False)
    await pool.open(wait=True)
    transport = PostgresTransport(pool, lambda: None, SECRET, retry=PATIENT)
    try:
        async with pool.connection():  # the only connection, taken
            started = time.monotonic()
            with pytest.raises(errors.DatabaseUnavailable):
                await transport.select("styles")
            assert time.monotonic() - started < 0.6
    finally:
        await pool.close()
