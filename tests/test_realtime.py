"""The Realtime doorbell on Supabase: supabase-py's realtime client, through tests/realtime.py
(a Realtime stand-in on localhost fed by the real database), rings the worker and the
feed; HTTP goes to tests/gateway.py as in the other Supabase-mode tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
import respx

from portraitkit.client import PortraitClient
from portraitkit.errors import DatabaseUnavailable, NotAuthenticated
from portraitkit.feeds import RealtimeFeed
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.models import BatchStatus
from portraitkit.service import open_worker
from portraitkit.settings import Settings
from portraitkit.transports.supabase import SupabaseTransport
from portraitkit.worker import WorkerOptions
from tests.gateway import (
    Gateway,
    ProjectKeys,
    UserTokens,
    create_supabase_database,
    drop_database,
)
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


async def sign_up(
    gateway: Gateway, realtime: RealtimeServer, key: str | None = None
) -> PortraitClient:
    """A new user, signed in (with the legacy anon key unless ``key``), with credits."""
    account = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=50)
    transport = await SupabaseTransport.sign_in(
        realtime.url, key or gateway.anon_key, account.email, PASSWORD
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


@pytest.mark.parametrize("key", ["secret_key", "service_key"])
async def test_worker_on_supabase_is_woken_by_realtime(
    gateway: Gateway, realtime: RealtimeServer, user: PortraitClient, tmp_path: Path, key: str
) -> None:
    """The poll interval is a minute: a batch finished within seconds was rung in. With
    SUPABASE_SECRET_KEY (``sb_secret_...``) or the legacy service-role key."""
    settings = Settings(
        supabase_url=realtime.url,
        supabase_service_role_key=getattr(gateway.keys, key),
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


# -- Supabase's API keys and ES256 user tokens ---------------------------------------------


async def test_the_secret_keys_feed_joins_with_the_sockets_token_and_rings(
    gateway: Gateway, realtime: RealtimeServer, user: PortraitClient
) -> None:
    """The secret key is not a JWT: the join carries no token, so Realtime acts with the
    socket's (the service role's, from the gateway)."""
    service = await SupabaseTransport.service(realtime.url, gateway.keys.secret_key)
    feed = await RealtimeFeed(service.client, check_seconds=0.2).start()
    try:
        assert realtime.join_tokens == [realtime.keys.service_key]
        await new_batch(user)
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await service.aclose()


@pytest.mark.parametrize("user_tokens", ["HS256", "ES256"])
async def test_a_user_signed_in_with_the_publishable_key_hears_only_their_own(
    gateway: Gateway, realtime: RealtimeServer, other_user: PortraitClient, user_tokens: UserTokens
) -> None:
    gateway.user_tokens = user_tokens
    client = await sign_up(gateway, realtime, key=gateway.keys.publishable_key)
    transport = client.transport
    assert isinstance(transport, SupabaseTransport)
    feed = await RealtimeFeed(transport.client, table="generations", event="INSERT").start()
    try:
        [token] = realtime.join_tokens
        assert jwt.get_unverified_header(token)["alg"] == user_tokens
        assert jwt.decode(token, options={"verify_signature": False})["sub"] == transport.user_id
        await new_batch(other_user)
        assert await feed.wait(0.5) is False
        await new_batch(client)
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await client.aclose()


async def test_a_held_access_token_joins_as_its_user(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    """A token from elsewhere (the app's) is the join's from the start, not the key's."""
    account = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=9)
    session = gateway.issue_session(account)
    transport = await SupabaseTransport.from_access_token(
        realtime.url, gateway.keys.publishable_key, session["access_token"]
    )
    client = PortraitClient(transport, transport.storage())
    feed = await RealtimeFeed(transport.client, table="generations").start()
    try:
        assert realtime.join_tokens == [session["access_token"]]
        await new_batch(client)
        assert await feed.wait(5) is True
    finally:
        await feed.aclose()
        await client.aclose()


# -- refused joins and closed channels -----------------------------------------------------


async def test_a_join_refused_for_its_token_is_not_authenticated_and_not_retried(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    account = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD)
    expired = gateway.issue_session(account, ttl=-60)["access_token"]
    transport = await SupabaseTransport.from_access_token(
        realtime.url, gateway.keys.publishable_key, expired
    )
    with pytest.raises(NotAuthenticated, match="InvalidJWTToken: Token has expired"):
        await RealtimeFeed(transport.client).start()
    await asyncio.sleep(1.5)  # supabase-py would rejoin an errored channel after 1 s
    assert (realtime.joins, realtime.refused) == (0, 1)
    await transport.aclose()


async def test_a_join_refused_for_now_is_database_unavailable(
    service: SupabaseTransport, realtime: RealtimeServer
) -> None:
    realtime.refuse_joins("RealtimeRestarting: Realtime is restarting, please standby")
    with pytest.raises(DatabaseUnavailable, match="RealtimeRestarting") as caught:
        await RealtimeFeed(service.client).start()
    assert caught.value.details == {
        "reason": "RealtimeRestarting: Realtime is restarting, please standby"
    }


async def test_feed_joins_again_after_the_server_closes_its_channel(
    generations_feed: RealtimeFeed, realtime: RealtimeServer, user: PortraitClient
) -> None:
    await realtime.close_channels()
    await until(lambda: realtime.joins >= 2, "joining a new channel")
    assert await generations_feed.wait(1) is True  # rung on rejoining: anything may have changed
    await new_batch(user)
    assert await generations_feed.wait(5) is True


async def test_feed_keeps_rejoining_with_backoff_while_realtime_refuses(
    generations_feed: RealtimeFeed, realtime: RealtimeServer, user: PortraitClient
) -> None:
    realtime.refuse_joins("RealtimeRestarting: Realtime is restarting, please standby")
    await realtime.close_channels()
    await until(lambda: realtime.refused >= 3, "refused rejoins")
    realtime.refuse_joins(None)
    await until(lambda: realtime.joins >= 2, "the rejoin accepted")
    await new_batch(user)
    assert await generations_feed.wait(5) is True
    assert generations_feed.error is None


async def test_a_channel_closed_as_its_token_expired_ends_the_feed_not_authenticated(
    gateway: Gateway, realtime: RealtimeServer
) -> None:
    """Realtime closes the channel when the token expires; the rejoin, with the same token
    (no refresh token to renew it), is refused: the feed ends, loudly, once."""
    account = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD)
    short_lived = gateway.issue_session(account, ttl=2)["access_token"]
    transport = await SupabaseTransport.from_access_token(
        realtime.url, gateway.keys.publishable_key, short_lived
    )
    feed = await RealtimeFeed(transport.client, check_seconds=0.2).start()
    try:
        async with asyncio.timeout(15):
            with pytest.raises(NotAuthenticated, match="Token has expired"):
                while True:
                    await feed.wait(10)  # may ring as the feed rejoins, then raises
        assert feed.error is not None
        assert await feed.wait(0.2) is False  # a polling feed from then on
        assert (realtime.joins, realtime.refused) == (1, 1)
    finally:
        await feed.aclose()
        await transport.aclose()
