"""The Realtime doorbell on Supabase: supabase-py's realtime client, through tests/realtime.py
(a Realtime stand-in on localhost fed by the real database), rings the worker and the
feed; HTTP goes to tests/gateway.py as in the other Supabase-mode tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import respx

from portraitkit.client import PortraitClient
from portraitkit.feeds import RealtimeFeed
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.models import BatchStatus
from portraitkit.service import open_worker
from portraitkit.settings import Settings
from portraitkit.transports.supabase import SupabaseTransport
from portraitkit.worker import WorkerOptions
from tests.gateway import Gateway, ProjectKeys, create_supabase_database, drop_database
from tests.realtime import RealtimeServer
from tests.waiting import until

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-realtime-test-secret-with-32-bytes-or-more"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    """A database of this module's own, shaped like a Supabase project (Storage's schema)."""
    url = create_supabase_database(database_url, f"t_realtime_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(database_url, url)


@pytest.fixture
async def realtime(db_url: str) -> AsyncIterator[RealtimeServer]:
    server = await RealtimeServer(db_url, ProjectKeys.create(SECRET)).start()
    yield server
    await server.aclose()


@pytest.fixture
def gateway(db_url: str, realtime: RealtimeServer, tmp_path: Path) -> Iterator[Gateway]:
    """PostgREST, Auth and Storage on the Realtime server's URL (HTTP only: respx leaves
    the WebSocket to the real server), with the same project keys."""
    with respx.mock(assert_all_called=False) as router:
        gateway = Gateway(db_url, SECRET, storage_root=tmp_path / "bucket", keys=realtime.keys)
        yield gateway.mount(router, realtime.url)
        gateway.close()


@pytest.fixture
async def service(gateway: Gateway, realtime: RealtimeServer) -> AsyncIterator[SupabaseTransport]:
    """The worker's connection: the service-role key."""
    transport = await SupabaseTransport.service(realtime.url, gateway.service_key)
    yield transport
    await transport.aclose()


async def sign_up(gateway: Gateway, realtime: RealtimeServer) -> PortraitClient:
    """A new user, signed in, with credits to spare."""
    account = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=50)
    transport = await SupabaseTransport.sign_in(
        realtime.url, gateway.anon_key, account.email, PASSWORD
    )
    return PortraitClient(transport, transport.storage())


@pytest.fixture
async def user(gateway: Gateway, realtime: RealtimeServer) -> AsyncIterator[PortraitClient]:
    client = await sign_up(gateway, realtime)
    yield client
    await client.aclose()


@pytest.fixture
async def other_user(gateway: Gateway, realtime: RealtimeServer) -> AsyncIterator[PortraitClient]:
    client = await sign_up(gateway, realtime)
    yield client
    await client.aclose()


@pytest.fixture
async def generations_feed(service: SupabaseTransport) -> AsyncIterator[RealtimeFeed]:
    """What the worker subscribes to: INSERTs on generations, with a quick watchdog."""
    feed = await RealtimeFeed(service.client, check_seconds=0.2).start()
    yield feed
    await feed.aclose()


async def new_batch(user: PortraitClient, *styles: str) -> uuid.UUID:
    return await user.create_batch(list(styles or ["poster"]), sample_portrait_png())


async def test_feed_rings_for_new_generations_and_only_then(
    generations_feed: RealtimeFeed, realtime: RealtimeServer, user: PortraitClient
) -> None:
    assert realtime.joins == 1
    assert await generations_feed.wait(0.3) is False
    await new_batch(user, "poster", "noir")
    assert await generations_feed.wait(5) is True


async def test_batch_feed_rings_for_its_own_batch_only(user: PortraitClient) -> None:
    """What `batches watch` subscribes to: UPDATEs of one generation_batches row."""
    watched, other = await new_batch(user), await new_batch(user)
    transport = user.transport
    assert isinstance(transport, SupabaseTransport)
    feed = RealtimeFeed(
        transport.client, table="generation_batches", event="UPDATE", filter=f"id=eq.{watched}"
    )
    await feed.start()
    try:
        await user.cancel_batch(other)
        assert await feed.wait(0.5) is False
        await user.cancel_batch(watched)
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()


async def test_a_users_feed_is_not_rung_by_another_users_batch(
    user: PortraitClient, other_user: PortraitClient
) -> None:
    """Realtime checks each change against the subscriber's RLS: another user's new items
    are not this user's to see, so they do not ring this user's feed."""
    transport = user.transport
    assert isinstance(transport, SupabaseTransport)
    feed = await RealtimeFeed(transport.client, table="generations", event="INSERT").start()
    try:
        await new_batch(other_user, "poster", "noir")
        assert await feed.wait(0.5) is False
        await new_batch(user, "poster")
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()


async def test_feed_rings_again_after_realtime_drops_the_connection(
    generations_feed: RealtimeFeed, realtime: RealtimeServer, user: PortraitClient
) -> None:
    await realtime.drop_connections()
    await until(lambda: realtime.joins >= 2, "joining the channel again")
    await new_batch(user)
    assert await generations_feed.wait(5) is True


async def test_feed_comes_back_after_an_outage_longer_than_supabase_py_retries(
    generations_feed: RealtimeFeed,
    realtime: RealtimeServer,
    service: SupabaseTransport,
    user: PortraitClient,
) -> None:
    socket = service.client.realtime
    socket.max_retries, socket.initial_backoff = 2, 0.05  # it gives up within a second
    await realtime.stop()
    await asyncio.sleep(1.0)
    assert not socket.is_connected  # supabase-py has given up; the watchdog has not
    await realtime.restart()
    await until(lambda: realtime.joins >= 2, "the feed coming back")
    await new_batch(user)
    assert await generations_feed.wait(5) is True


async def test_worker_on_supabase_is_woken_by_realtime(
    gateway: Gateway, realtime: RealtimeServer, user: PortraitClient, tmp_path: Path
) -> None:
    """The poll interval is a minute: a batch finished within seconds was rung in."""
    settings = Settings(
        supabase_url=realtime.url,
        supabase_service_role_key=gateway.service_key,
        state_dir=tmp_path,
        generator="noop",
    )
    options = WorkerOptions(poll_seconds=60)
    async with open_worker(settings, options) as worker:
        assert isinstance(worker.feed, RealtimeFeed)
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)  # the worker has looked once and now waits for the bell
        batch_id = await new_batch(user, "poster", "noir")

        async def completed() -> bool:
            return (await user.get_batch(batch_id)).status is BatchStatus.COMPLETED

        await until(completed, "the batch completing")
        worker.stop()
        stats = await running
    assert stats.completed == 2
