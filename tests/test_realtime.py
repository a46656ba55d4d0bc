"""The Realtime doorbell on Supabase: supabase-py's realtime client, through tests/realtime.py
(a Realtime stand-in on localhost fed by the real database), rings the worker and the
feed; HTTP goes to tests/gateway.py as in the other Supabase-mode tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
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
from tests.gateway import Gateway
from tests.realtime import RealtimeServer

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-realtime-test-secret-with-32-bytes-or-more"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def realtime(db_url: str) -> AsyncIterator[RealtimeServer]:
    server = await RealtimeServer(db_url).start()
    yield server
    await server.aclose()


@pytest.fixture
def gateway(db_url: str, realtime: RealtimeServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    """PostgREST, Auth and Storage on the Realtime server's URL (HTTP only: respx leaves
    the WebSocket to the real server)."""
    with respx.mock(assert_all_called=False) as router:
        gateway = Gateway(db_url, SECRET, storage_root=tmp_path / "bucket")
        yield gateway.mount(router, realtime.url)
        gateway.close()


async def user_client(gateway: Gateway, url: str) -> PortraitClient:
    user = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=50)
    transport = await SupabaseTransport.sign_in(url, gateway.anon_key, user.email, PASSWORD)
    return PortraitClient(transport, transport.storage())


async def test_feed_rings_for_new_generations_and_only_then(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    service = await SupabaseTransport.service(realtime.url, gateway.service_key)
    client = await user_client(gateway, realtime.url)
    feed = await RealtimeFeed(service.client).start()
    try:
        assert realtime.joins == 1
        assert await feed.wait(0.3) is False
        await client.create_batch(["poster", "noir"], sample_portrait_png())
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await client.aclose()
        await service.aclose()


async def test_batch_feed_rings_for_its_own_batch_only(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    """What `batches watch` subscribes to: UPDATEs of one generation_batches row."""
    client = await user_client(gateway, realtime.url)
    watched = await client.create_batch(["poster"], sample_portrait_png())
    other = await client.create_batch(["noir"], sample_portrait_png())
    transport = client.transport
    assert isinstance(transport, SupabaseTransport)
    feed = RealtimeFeed(
        transport.client, table="generation_batches", event="UPDATE", filter=f"id=eq.{watched}"
    )
    await feed.start()
    try:
        await client.cancel_batch(other)
        assert await feed.wait(0.5) is False
        await client.cancel_batch(watched)
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await client.aclose()


async def test_feed_rings_again_after_realtime_drops_the_connection(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    service = await SupabaseTransport.service(realtime.url, gateway.service_key)
    client = await user_client(gateway, realtime.url)
    feed = await RealtimeFeed(service.client).start()
    try:
        await realtime.drop_connections()
        deadline = time.monotonic() + 10
        while realtime.joins < 2:  # the client reconnects and joins the channel again
            assert time.monotonic() < deadline, "the channel was not joined again"
            await asyncio.sleep(0.05)
        await client.create_batch(["poster"], sample_portrait_png())
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await client.aclose()
        await service.aclose()


async def test_feed_comes_back_after_an_outage_longer_than_supabase_py_retries(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    service = await SupabaseTransport.service(realtime.url, gateway.service_key)
    client = await user_client(gateway, realtime.url)
    feed = await RealtimeFeed(service.client, check_seconds=0.2).start()
    socket = service.client.realtime
    socket.max_retries, socket.initial_backoff = 2, 0.05  # it gives up within a second
    try:
        await realtime.stop()
        await asyncio.sleep(1.0)
        assert not socket.is_connected  # supabase-py has given up
        await realtime.restart()
        deadline = time.monotonic() + 10
        while realtime.joins < 2:
            assert time.monotonic() < deadline, "the feed did not come back"
            await asyncio.sleep(0.05)
        await client.create_batch(["poster"], sample_portrait_png())
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await client.aclose()
        await service.aclose()


async def test_worker_on_supabase_is_woken_by_realtime(
    gateway: Gateway, realtime: RealtimeServer, tmp_path: Path
) -> None:
    """The poll interval is a minute: a batch finished within seconds was rung in."""
    client = await user_client(gateway, realtime.url)
    settings = Settings(
        supabase_url=realtime.url,
        supabase_service_role_key=gateway.service_key,
        state_dir=tmp_path,
        generator="noop",
    )
    options = WorkerOptions(max_running_per_user=None, poll_seconds=60)
    try:
        async with open_worker(settings, options) as worker:
            assert isinstance(worker.feed, RealtimeFeed)
            running = asyncio.create_task(worker.run())
            await asyncio.sleep(0.3)  # the worker has looked once and now waits for the bell
            batch_id = await client.create_batch(["poster", "noir"], sample_portrait_png())
            deadline = time.monotonic() + 10
            while (batch := await client.get_batch(batch_id)).status is not BatchStatus.COMPLETED:
                assert time.monotonic() < deadline, f"not woken: {batch.status}"
                await asyncio.sleep(0.05)
            worker.stop()
            stats = await running
    finally:
        await client.aclose()
    assert batch.completed_count == 2 and stats.completed == 2
