"""A user's token signed with the project's key pair (ES256, published as JWKS), as new
Supabase projects issue them, held by a script that reaches the database directly.

The direct transport verifies it with the same verifier as the web API (tests/web checks
that side): the key its ``kid`` names in the JWKS, fetched over HTTP from a local server
(tests/jwks.py), the audience and the expiry; the database then runs as that user (RLS).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from portraitkit.auth import LocalUser, TokenVerifier, create_local_user, issue_user_token
from portraitkit.client import PortraitClient
from portraitkit.errors import DatabaseUnavailable, NotAuthenticated
from portraitkit.session import open_client
from portraitkit.settings import Settings
from portraitkit.transports.postgres import PostgresTransport, make_pool
from tests.jwks import KID, Jwks
from tests.storage_folder import FolderStorageAPI

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-signing-keys-test-secret-with-32-bytes"
MakeUser = Callable[..., LocalUser]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    keys = Jwks()
    yield keys
    keys.close()


@pytest.fixture
def settings(db_url: str, jwks: Jwks, tmp_path: Path) -> Settings:
    """Direct Postgres, as with a DATABASE_URL of a Supabase project whose users sign in
    there: our secret for local tokens, the project's JWKS for theirs."""
    return Settings(database_url=db_url, jwt_secret=SECRET, state_dir=tmp_path, jwks_url=jwks.url)


@pytest.fixture
def make_user(db_url: str) -> MakeUser:
    def make(credits: int = 10) -> LocalUser:
        with psycopg.connect(db_url, autocommit=True) as conn:
            return create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", credits)

    return make


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 400), (40, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWT put together by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _user_claims(user: LocalUser) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": str(user.id),
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 600,
    }


async def _batch_ids(client: PortraitClient) -> set[str]:
    return {str(batch.id) for batch in (await client.list_batches()).items}


async def test_a_key_pair_token_reaches_the_database_as_its_user(
    settings: Settings, make_user: MakeUser, jwks: Jwks
) -> None:
    alice, bob = make_user(credits=7), make_user(credits=5)
    async with await open_client(settings, access_token=jwks.token(alice)) as as_alice:
        assert as_alice.user_id == str(alice.id)
        mine = await as_alice.create_batch(["poster"], await as_alice.upload_source(png()))
        async with await open_client(settings, access_token=jwks.token(bob)) as as_bob:
            theirs = await as_bob.create_batch(["noir"], await as_bob.upload_source(png()))
            assert await _batch_ids(as_bob) == {str(theirs)}
        assert await _batch_ids(as_alice) == {str(mine)}
        assert await as_alice.balance() == 6


async def test_a_token_signed_with_the_shared_secret_still_works(
    settings: Settings, make_user: MakeUser
) -> None:
    user = make_user(credits=3)
    token = issue_user_token(SECRET, user.id, user.email)
    async with await open_client(settings, access_token=token) as client:
        assert (client.user_id, await client.balance()) == (str(user.id), 3)


def _refused_tokens(jwks: Jwks, user: LocalUser) -> dict[str, str]:
    stranger = ec.generate_private_key(ec.SECP256R1())
    public_pem = jwks.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "another key under the project's kid": jwks.token(user, key=stranger),
        "another key under its own kid": jwks.token(user, kid="not-published", key=stranger),
        "expired": jwks.token(user, ttl=-120),
        "for another audience": jwks.token(user, aud="someone-else"),
        "unsigned (alg none)": _compact(
            {"alg": "none", "typ": "JWT", "kid": KID}, _user_claims(user), lambda _: b""
        ),
        "HS256 with the public key as its secret": _compact(
            {"alg": "HS256", "typ": "JWT", "kid": KID},
            _user_claims(user),
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "RS256 naming the project's EC key": _compact(
            {"alg": "RS256", "typ": "JWT", "kid": KID}, _user_claims(user), lambda _: b"x" * 256
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "another key under the project's kid",
        "another key under its own kid",
        "expired",
        "for another audience",
        "unsigned (alg none)",
        "HS256 with the public key as its secret",
        "RS256 naming the project's EC key",
    ],
)
async def test_a_token_the_project_did_not_sign_for_this_api_is_refused(
    settings: Settings, make_user: MakeUser, jwks: Jwks, kind: str
) -> None:
    user = make_user()
    token = _refused_tokens(jwks, user)[kind]
    async with await open_client(settings, access_token=token) as client:
        with pytest.raises(NotAuthenticated):
            await client.balance()
        with pytest.raises(NotAuthenticated):
            _ = client.user_id


@pytest.fixture
async def transport_for(db_url: str) -> AsyncIterator[Callable[..., PostgresTransport]]:
    """transport_for(tokens, verifier) -> the direct transport on a pool of its own."""
    pool = make_pool(db_url, max_size=2)
    await pool.open()

    def make(tokens: Callable[[], str], verifier: TokenVerifier) -> PostgresTransport:
        return PostgresTransport(pool, tokens, SECRET, verifier=verifier)

    yield make
    await pool.close()


async def test_a_newly_published_key_is_picked_up(
    transport_for: Callable[..., PostgresTransport], make_user: MakeUser, jwks: Jwks
) -> None:
    user = make_user(credits=4)
    token = jwks.token(user)  # the script's token source reads this name at each call
    client = PortraitClient(
        transport_for(lambda: token, TokenVerifier(SECRET, jwks.url, refetch_after_seconds=0))
    )
    assert await client.balance() == 4
    fetched = jwks.requests
    jwks.rotate("rotated-in")
    token = jwks.token(user, kid="rotated-in")
    assert await client.balance() == 4
    assert await client.balance() == 4
    assert jwks.requests == fetched + 1  # looked up once, then held


async def test_an_unknown_key_is_looked_up_at_most_once_a_window(
    make_user: MakeUser, jwks: Jwks
) -> None:
    """A flood of tokens naming made-up keys cannot make us hammer the auth server."""
    user = make_user()
    verifier = TokenVerifier(SECRET, jwks.url, refetch_after_seconds=0.5)
    await verifier.verify(jwks.token(user))
    fetched = jwks.requests
    jwks.rotate("rotated-in-soon")
    newer = jwks.token(user, kid="rotated-in-soon")
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            await verifier.verify(newer)
    assert jwks.requests == fetched
    await asyncio.sleep(0.6)
    assert (await verifier.verify(newer))["sub"] == str(user.id)
    assert jwks.requests == fetched + 1


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json"


async def test_unreachable_signing_keys_are_a_typed_error(
    settings: Settings, make_user: MakeUser, jwks: Jwks
) -> None:
    url = _closed_port_url()
    token = jwks.token(make_user())
    unreachable = settings.model_copy(update={"jwks_url": url})
    with pytest.raises(DatabaseUnavailable) as raised:
        await open_client(unreachable, access_token=token)
    assert raised.value.details == {"jwks_url": url}
    assert "signing keys could not be read" in raised.value.message


async def test_signing_keys_that_never_answer_time_out(make_user: MakeUser, jwks: Jwks) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        verifier = TokenVerifier(SECRET, url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await verifier.verify(jwks.token(make_user()))
    assert time.monotonic() - started < 5


async def test_keys_already_held_outlive_an_outage_of_the_jwks(
    make_user: MakeUser, jwks: Jwks
) -> None:
    user = make_user()
    verifier = TokenVerifier(SECRET, jwks.url, cache_seconds=0)
    await verifier.verify(jwks.token(user))
    verifier.jwks_url = _closed_port_url()  # the auth server goes away
    assert (await verifier.verify(jwks.token(user)))["sub"] == str(user.id)


def test_a_supabase_database_urls_project_publishes_the_keys() -> None:
    """DATABASE_URL alone names the project, directly or through its pooler."""
    direct = "postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres"
    pooled = "postgresql://postgres.abcdefgh:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres"
    jwks_url = "https://abcdefgh.supabase.co/auth/v1/.well-known/jwks.json"
    assert Settings(database_url=direct, _env_file=None).signing_keys_url() == jwks_url
    assert Settings(database_url=pooled, _env_file=None).signing_keys_url() == jwks_url
    other = "postgresql://app:pw@db.internal:5432/app"
    assert Settings(database_url=other, _env_file=None).signing_keys_url() is None


def _upload(storage: FolderStorageAPI, folder: str, token: str) -> httpx.Response:
    resource = f"object/portraits/{folder}/photo.png"
    request = httpx.Request(
        "POST",
        f"http://storage.test/storage/v1/{resource}",
        content=png(),
        headers={"Content-Type": "image/png"},
    )
    return storage.handle(request, resource, token)


def test_the_folder_storage_stand_in_takes_key_pair_tokens(
    tmp_path: Path, make_user: MakeUser, jwks: Jwks
) -> None:
    user = make_user()
    storage = FolderStorageAPI(SECRET, tmp_path, jwks.published())
    assert _upload(storage, str(user.id), jwks.token(user)).status_code == 200
    assert (tmp_path / "portraits" / str(user.id) / "photo.png").read_bytes() == png()
    # Verified, and so held to the folder rule rather than refused as a bad token:
    refused = _upload(storage, str(uuid.uuid4()), jwks.token(user)).json()
    assert (refused["statusCode"], refused["message"]) == (
        "403",
        "new row violates row-level security policy",
    )
