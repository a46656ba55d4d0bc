"""Supabase as new projects are: opaque API keys and user tokens signed with a key pair.

The transport talks to tests/gateway.py with the publishable key (users) and the secret key
(the worker), which are not JWTs: they belong in ``apikey`` only, and a ``Bearer`` that is
not a JWT is refused by PostgREST and Storage (the gateway passes it on, as Supabase's does;
tests/test_stand_ins.py shows supabase-py on its own refused). With ``user_tokens="ES256"``
Auth signs access tokens with the project's key pair, and PostgREST and Storage verify
them against its JWKS, as on a project that has moved to asymmetric signing keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest
import respx

from portraitkit.auth import LocalUser
from portraitkit.client import PortraitClient
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.transports.base import RetryPolicy
from portraitkit.transports.supabase import SupabaseTransport, is_jwt
from tests.gateway import Gateway, UserTokens, create_supabase_database, drop_database

pytestmark = pytest.mark.anyio

BASE_URL = "https://portraitkit-keys.supabase.co"
SECRET = "portraitkit-keys-test-secret-with-32-bytes-or-more"
PASSWORD = "correct horse battery staple"
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.004)
PNG = b"\x89PNG\r\n\x1a\n" + b"portrait bytes"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    url = create_supabase_database(database_url, f"t_supabase_keys_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(database_url, url)


@pytest.fixture(params=["HS256", "ES256"])
def gateway(
    db_url: str, respx_mock: respx.MockRouter, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """The project, its user tokens signed with the legacy secret or its key pair."""
    user_tokens: UserTokens = request.param
    gw = Gateway(db_url, SECRET, storage_root=tmp_path, user_tokens=user_tokens)
    yield gw.mount(respx_mock, base_url=BASE_URL)
    gw.close()


@pytest.fixture
def user(gateway: Gateway) -> LocalUser:
    return gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=10)


@pytest.fixture
async def signed_in(gateway: Gateway, user: LocalUser) -> AsyncIterator[SupabaseTransport]:
    """The user, signed in with the publishable key."""
    transport = await SupabaseTransport.sign_in(
        BASE_URL, gateway.keys.publishable_key, user.email, PASSWORD, retry=FAST
    )
    yield transport
    await transport.aclose()


@pytest.fixture
async def service(gateway: Gateway) -> AsyncIterator[SupabaseTransport]:
    """The worker's identity: the secret key."""
    transport = await SupabaseTransport.service(BASE_URL, gateway.keys.secret_key, retry=FAST)
    yield transport
    await transport.aclose()


def balance(db_url: str, user: LocalUser) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "select total_credits from public.profiles where id = %s", (user.id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def bearers(gateway: Gateway) -> list[str]:
    """Every bearer token the gateway received."""
    found = []
    for request in gateway.received:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme:
            found.append(token)
    return found


async def test_a_user_signed_in_with_the_publishable_key_buys_a_batch(
    gateway: Gateway, signed_in: SupabaseTransport, user: LocalUser, db_url: str
) -> None:
    client = PortraitClient(signed_in, signed_in.storage())
    batch_id = await client.create_batch(["pencil_sketch", "ink_wash"], sample_portrait_png())
    assert [b.id for b in (await client.list_batches()).items] == [batch_id]
    assert balance(db_url, user) == 7
    token = signed_in.client.options.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(token)["alg"] == gateway.user_tokens


async def test_the_users_storage_round_trip_with_the_publishable_key(
    signed_in: SupabaseTransport, user: LocalUser
) -> None:
    storage = signed_in.storage()
    path = f"{user.id}/sources/photo.png"
    await storage.put(path, PNG, "image/png")
    assert await storage.get(path) == PNG
    async with httpx.AsyncClient() as http:
        assert (await http.get(await storage.url(path, expires_in=60))).content == PNG


async def test_the_secret_key_acts_as_the_service_role(
    service: SupabaseTransport, user: LocalUser, db_url: str
) -> None:
    assert service.user_id is None
    assert await service.rpc("grant_credits", {"user_id": str(user.id), "amount": 5}) == 15
    assert balance(db_url, user) == 15


async def test_the_services_storage_round_trip_with_the_secret_key(
    service: SupabaseTransport, signed_in: SupabaseTransport, user: LocalUser
) -> None:
    """The worker stores a result in a user's folder; the user reads it as their own."""
    path = f"{user.id}/results/generation-1.png"
    await service.storage().put(path, PNG, "image/png")
    assert await service.storage().get(path) == PNG
    assert await signed_in.storage().get(path) == PNG
    await service.storage().remove([path])


async def test_an_expired_session_is_refreshed_with_the_publishable_key(
    gateway: Gateway, user: LocalUser
) -> None:
    expired = gateway.issue_session(user, ttl=-60)
    transport = await SupabaseTransport.from_access_token(
        BASE_URL,
        gateway.keys.publishable_key,
        expired["access_token"],
        expired["refresh_token"],
        retry=FAST,
    )
    assert (await transport.rpc("batch_stats", retry_safe=True))["balance"] == 10
    assert gateway.count("POST", "/auth/v1/token") == 1
    await transport.aclose()


async def test_anonymous_with_the_publishable_key_reads_the_catalogue(gateway: Gateway) -> None:
    anonymous = await SupabaseTransport.connect(BASE_URL, gateway.keys.publishable_key)
    keys = [row["key"] for row in await anonymous.select("styles", columns=("key",))]
    assert "charcoal" in keys
    await anonymous.aclose()


async def test_no_request_carries_an_api_key_as_bearer(gateway: Gateway, user: LocalUser) -> None:
    """A whole session with each key: sign-in, refresh, calls, uploads, downloads, links;
    every request has its key in ``apikey`` and nothing but JWTs in ``Authorization``."""
    user_transport = await SupabaseTransport.sign_in(
        BASE_URL, gateway.keys.publishable_key, user.email, PASSWORD, retry=FAST
    )
    client = PortraitClient(user_transport, user_transport.storage())
    await client.create_batch(["charcoal"], sample_portrait_png())
    expired = gateway.issue_session(user, ttl=-60)
    returning = await SupabaseTransport.from_access_token(
        BASE_URL,
        gateway.keys.publishable_key,
        expired["access_token"],
        expired["refresh_token"],
        retry=FAST,
    )
    await returning.rpc("batch_stats", retry_safe=True)  # refreshed on the way
    await returning.aclose()
    await client.list_batches()
    worker = await SupabaseTransport.service(BASE_URL, gateway.keys.secret_key, retry=FAST)
    await worker.rpc("grant_credits", {"user_id": str(user.id), "amount": 1})
    await worker.storage().put(f"{user.id}/results/r.png", PNG, "image/png")
    await worker.storage().url(f"{user.id}/results/r.png")
    await user_transport.aclose()
    await worker.aclose()

    keyed = [r for r in gateway.received if "/object/sign/" not in r.url.path]
    assert {r.headers.get("apikey") for r in keyed} == {
        gateway.keys.publishable_key,
        gateway.keys.secret_key,
    }
    assert gateway.count("POST", "/auth/v1/token") == 2  # the sign-in and the refresh
    assert bearers(gateway)  # the user's calls did carry their token
    assert all(is_jwt(token) for token in bearers(gateway))
