"""The hosted-service stand-ins refuse what the real services refuse.

tests/gateway.py (API gateway, PostgREST, Storage) and tests/realtime.py are only worth
testing against if they are at least as strict as Supabase: these tests pin each refusal,
with the status and error shape the real service answers (sources in each stand-in's
docstring), so a later change cannot make them lenient again without a failing test.
Realtime's are in tests/test_realtime_stand_in.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import AsyncClientOptions, acreate_client

from portraitkit import errors
from portraitkit.auth import LocalUser, TokenVerifier
from portraitkit.transports.base import RetryPolicy
from portraitkit.transports.supabase import SupabaseTransport
from tests.gateway import Gateway, create_supabase_database, drop_database

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-stand-ins-test-secret-with-32-bytes-or-more"
BASE_URL = "https://portraitkit-stand-ins.supabase.co"
PASSWORD = "correct horse battery staple"
ONCE = RetryPolicy(attempts=1, base_delay=0.001, max_delay=0.001)
MB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    url = create_supabase_database(database_url, f"t_stand_ins_{uuid.uuid4().hex[:6]}")
    yield url
    drop_database(database_url, url)


@pytest.fixture
def gateway(db_url: str, respx_mock: respx.MockRouter, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(db_url, SECRET, storage_root=tmp_path).mount(respx_mock, base_url=BASE_URL)
    yield gw
    gw.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=BASE_URL) as client:
        yield client


def new_user(gateway: Gateway, credits: int = 10) -> LocalUser:
    return gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=credits)


async def signed_in(gateway: Gateway, user: LocalUser) -> SupabaseTransport:
    return await SupabaseTransport.sign_in(
        BASE_URL, gateway.anon_key, user.email, PASSWORD, retry=ONCE
    )


def signed(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256")


def headers(apikey: str, token: str | None = None) -> dict[str, str]:
    return {"apikey": apikey, **({"Authorization": f"Bearer {token}"} if token else {})}


def storage_rows(db_url: str, name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "select bucket_id, owner, owner_id from storage.objects where name = %s", (name,)
        ).fetchall()


# -- the API gateway ----------------------------------------------------------------------


async def test_a_request_without_an_api_key_is_refused(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    answer = await http.get("/rest/v1/styles")
    assert (answer.status_code, answer.json()["message"]) == (401, "No API key found in request")


async def test_a_signed_jwt_that_is_not_a_project_key_is_refused_as_apikey(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    forged = signed({"role": "anon", "iss": "supabase"})  # right secret, but not a key
    answer = await http.get("/rest/v1/styles", headers=headers(forged))
    assert (answer.status_code, answer.json()["message"]) == (401, "Invalid API key")


async def test_a_client_with_a_forged_api_key_gets_nothing(gateway: Gateway) -> None:
    client = await SupabaseTransport.connect(BASE_URL, signed({"role": "anon"}), retry=ONCE)
    with pytest.raises(errors.PortraitkitError, match="Invalid API key"):
        await client.select("styles", columns=("key",))
    await client.aclose()


async def test_the_publishable_key_reads_as_anon(gateway: Gateway) -> None:
    """Sent in ``apikey`` only (the transport never sends it as a bearer), the publishable
    key acts as anon: the catalogue, but no user's functions."""
    client = await SupabaseTransport.connect(BASE_URL, gateway.keys.publishable_key, retry=ONCE)
    keys = [row["key"] for row in await client.select("styles", columns=("key",))]
    assert "charcoal" in keys
    with pytest.raises(errors.NotAuthenticated):
        await client.rpc("batch_stats", retry_safe=True)
    await client.aclose()


async def test_the_secret_key_acts_as_service_role(gateway: Gateway) -> None:
    user = new_user(gateway, credits=5)
    service = await SupabaseTransport.service(BASE_URL, gateway.keys.secret_key, retry=ONCE)
    assert await service.rpc("grant_credits", {"user_id": str(user.id), "amount": 2}) == 7
    await service.aclose()


async def test_a_publishable_key_without_authorization_is_anon(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    answer = await http.post(
        "/rest/v1/rpc/batch_stats", json={}, headers=headers(gateway.keys.publishable_key)
    )
    assert (answer.status_code, answer.json()["code"]) == (401, "42501")
    styles = await http.get(
        "/rest/v1/styles", params={"select": "key"}, headers=headers(gateway.keys.publishable_key)
    )
    assert styles.status_code == 200


async def test_a_secret_key_without_authorization_is_service_role(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    user = new_user(gateway, credits=5)
    answer = await http.post(
        "/rest/v1/rpc/grant_credits",
        json={"user_id": str(user.id), "amount": 1},
        headers=headers(gateway.keys.secret_key),
    )
    assert (answer.status_code, answer.json()) == (200, 6)


async def test_an_unknown_sb_key_is_refused_as_apikey(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    answer = await http.get("/rest/v1/styles", headers=headers("sb_secret_not-this-projects"))
    assert (answer.status_code, answer.json()["message"]) == (401, "Invalid API key")


@pytest.mark.parametrize("key", ["publishable_key", "secret_key"])
async def test_an_api_key_as_bearer_reaches_postgrest_and_is_pgrst301(
    gateway: Gateway, http: httpx.AsyncClient, key: str
) -> None:
    """What supabase-py sends until someone signs in (supabase/supabase-py#1230)."""
    api_key = getattr(gateway.keys, key)
    answer = await http.get("/rest/v1/styles", headers=headers(api_key, api_key))
    assert answer.status_code == 401
    assert answer.json() == {
        "code": "PGRST301",
        "message": "Expected 3 parts in JWT; got 1",
        "details": None,
        "hint": None,
    }


@pytest.mark.parametrize("key", ["publishable_key", "secret_key"])
async def test_an_api_key_as_bearer_is_access_denied_by_storage(
    gateway: Gateway, http: httpx.AsyncClient, key: str
) -> None:
    api_key = getattr(gateway.keys, key)
    answer = await http.get(
        "/storage/v1/object/authenticated/portraits/any/photo.png",
        headers=headers(api_key, api_key),
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "statusCode": "403",
        "code": "AccessDenied",
        "error": "Unauthorized",
        "message": "Invalid Compact JWS",
    }


async def test_a_secret_key_as_bearer_does_not_lift_a_publishable_request(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    answer = await http.post(
        "/rest/v1/rpc/grant_credits",
        json={"user_id": str(new_user(gateway).id), "amount": 1000},
        headers=headers(gateway.keys.publishable_key, gateway.keys.secret_key),
    )
    assert (answer.status_code, answer.json()["code"]) == (401, "PGRST301")


@pytest.mark.parametrize("key", ["publishable_key", "secret_key"])
async def test_supabase_py_on_its_own_is_refused_with_an_sb_key(gateway: Gateway, key: str) -> None:
    """The gateway really checks: supabase-py without the transport's request hook sends
    the key as a bearer, and PostgREST refuses it (SupabaseTransport's tests pass only
    because the transport does not)."""
    async with httpx.AsyncClient() as http:
        client = await acreate_client(
            BASE_URL, getattr(gateway.keys, key), AsyncClientOptions(httpx_client=http)
        )
        with pytest.raises(APIError) as caught:
            await client.table("styles").select("key").execute()
        with pytest.raises(StorageApiError, match="Invalid Compact JWS"):
            await client.storage.from_("portraits").download("any/photo.png")
    assert (caught.value.code, caught.value.message) == (
        "PGRST301",
        "Expected 3 parts in JWT; got 1",
    )
    assert gateway.received[0].headers["authorization"] == f"Bearer {getattr(gateway.keys, key)}"


async def test_a_bearer_that_is_not_a_jwt_is_pgrst301(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    answer = await http.get("/rest/v1/styles", headers=headers(gateway.anon_key, "not-a-jwt"))
    assert answer.status_code == 401
    assert answer.json()["code"] == "PGRST301"
    assert answer.json()["message"] == "Expected 3 parts in JWT; got 1"


# -- PostgREST ----------------------------------------------------------------------------


async def test_a_token_claiming_role_postgres_is_refused_and_reads_nothing(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    token = signed({"role": "postgres", "sub": str(uuid.uuid4())})
    answer = await http.get(
        "/rest/v1/credit_ledger", params={"select": "*"}, headers=headers(gateway.anon_key, token)
    )
    assert answer.status_code == 403
    assert answer.json() == {
        "code": "42501",
        "message": 'permission denied to set role "postgres"',
        "details": None,
        "hint": None,
    }


async def test_a_client_with_a_postgres_role_token_is_not_allowed(gateway: Gateway) -> None:
    token = signed({"role": "postgres"})
    client = await SupabaseTransport.from_access_token(
        BASE_URL, gateway.anon_key, token, retry=ONCE
    )
    with pytest.raises(errors.NotAllowed, match="permission denied to set role"):
        await client.select("credit_ledger")
    await client.aclose()


async def test_a_token_claiming_a_role_that_does_not_exist_is_401(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    token = signed({"role": "no_such_role"})
    answer = await http.get("/rest/v1/styles", headers=headers(gateway.anon_key, token))
    assert (answer.status_code, answer.json()["code"]) == (401, "22023")
    assert answer.json()["message"] == 'role "no_such_role" does not exist'


async def test_a_token_signed_with_another_secret_is_pgrst301(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    token = signed({"role": "service_role"}, secret="another-secret-with-at-least-32-bytes!!")
    answer = await http.post(
        "/rest/v1/rpc/batch_stats", json={}, headers=headers(gateway.anon_key, token)
    )
    assert (answer.status_code, answer.json()["code"]) == (401, "PGRST301")


def es256(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    return jwt.encode(
        {"exp": int(time.time()) + 600, **claims}, key, algorithm="ES256", headers={"kid": kid}
    )


async def test_a_token_signed_with_the_projects_key_pair_is_accepted(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    user = new_user(gateway, credits=4)
    claims = {"role": "authenticated", "aud": "authenticated", "sub": str(user.id)}
    token = es256(claims, gateway.keys.signing_key, gateway.keys.signing_kid)
    answer = await http.post(
        "/rest/v1/rpc/batch_stats", json={}, headers=headers(gateway.anon_key, token)
    )
    assert (answer.status_code, answer.json()["balance"]) == (200, 4)


@pytest.mark.parametrize("kid", ["the-projects-kid", "another-kid"])
async def test_a_token_signed_with_another_key_pair_is_pgrst301(
    gateway: Gateway, http: httpx.AsyncClient, kid: str
) -> None:
    """Whether or not it names the project's key: no key of the JWKS verifies it."""
    kid = gateway.keys.signing_kid if kid == "the-projects-kid" else kid
    token = es256({"role": "service_role"}, ec.generate_private_key(ec.SECP256R1()), kid)
    answer = await http.get("/rest/v1/styles", headers=headers(gateway.anon_key, token))
    assert (answer.status_code, answer.json()["code"]) == (401, "PGRST301")
    assert answer.json()["message"] == "No suitable key or wrong key type"


async def test_auth_publishes_the_projects_public_key_without_an_api_key(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    answer = await http.get("/auth/v1/.well-known/jwks.json")
    assert answer.status_code == 200
    [key] = answer.json()["keys"]
    assert (key["kid"], key["alg"], key["kty"], "d" in key) == (
        gateway.keys.signing_kid,
        "ES256",
        "EC",
        False,
    )


async def test_es256_sessions_verify_against_the_published_keys(gateway: Gateway) -> None:
    """What the web server does with a Supabase user's token: portraitkit's verifier, fed
    the gateway's JWKS, accepts the ES256 access tokens the gateway's Auth issues."""
    gateway.user_tokens = "ES256"
    user = new_user(gateway)
    token = gateway.issue_session(user)["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    verifier = TokenVerifier(None, f"{BASE_URL}/auth/v1/.well-known/jwks.json")
    claims = await verifier.verify(token)
    assert (claims["sub"], claims["role"]) == (str(user.id), "authenticated")


async def test_the_database_is_reached_only_as_authenticator(gateway: Gateway) -> None:
    with psycopg.connect(gateway.postgrest.conninfo) as conn:
        user, superuser, inherits = conn.execute(
            "select current_user, rolsuper, rolinherit from pg_roles where rolname = current_user"
        ).fetchone() or (None, None, None)
        members = conn.execute(
            "select array_agg(r.rolname order by r.rolname) from pg_auth_members m"
            " join pg_roles r on r.oid = m.roleid where m.member = current_user::regrole"
        ).fetchone()
    assert (user, superuser, inherits) == ("authenticator", False, False)
    assert members == (["anon", "authenticated", "service_role"],)


async def test_rpc_arguments_are_typed_by_the_function_not_the_client(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    """json_to_record casts with the declared type: a word for an integer is 22P02."""
    user = new_user(gateway)
    token = gateway.issue_session(user)["access_token"]
    answer = await http.post(
        "/rest/v1/rpc/list_batches",
        json={"page_size": "lots"},
        headers=headers(gateway.anon_key, token),
    )
    assert (answer.status_code, answer.json()["code"]) == (400, "22P02")
    assert answer.json()["message"] == 'invalid input syntax for type integer: "lots"'


# -- Storage ------------------------------------------------------------------------------


async def test_an_upload_is_a_storage_row_owned_by_the_caller(
    gateway: Gateway, db_url: str
) -> None:
    """What create_generation_batch looks for: bucket, name, and the owner's id."""
    user = new_user(gateway)
    transport = await signed_in(gateway, user)
    path = f"{user.id}/sources/photo.png"
    await transport.storage().put(path, b"png bytes", "image/png")
    assert storage_rows(db_url, path) == [("portraits", user.id, str(user.id))]
    await transport.aclose()


async def test_storage_policies_refuse_an_upload_to_another_users_folder(
    gateway: Gateway, db_url: str
) -> None:
    user, other = new_user(gateway), new_user(gateway)
    transport = await signed_in(gateway, user)
    path = f"{other.id}/sources/photo.png"
    with pytest.raises(errors.NotAllowed, match="row-level security") as caught:
        await transport.storage().put(path, b"png bytes", "image/png")
    assert caught.value.details["status"] == "403"
    assert storage_rows(db_url, path) == []
    await transport.aclose()


async def test_storage_policies_hide_another_users_object(gateway: Gateway, db_url: str) -> None:
    owner_user, intruder = new_user(gateway), new_user(gateway)
    owner = await signed_in(gateway, owner_user)
    path = f"{owner_user.id}/sources/photo.png"
    await owner.storage().put(path, b"png bytes", "image/png")
    other = await signed_in(gateway, intruder)
    theirs = other.storage()

    with pytest.raises(errors.ObjectNotFound):
        await theirs.get(path)
    with pytest.raises(errors.ObjectNotFound):
        await theirs.url(path)
    await theirs.remove([path])  # skipped silently, as Storage does

    assert await owner.storage().get(path) == b"png bytes"
    assert len(storage_rows(db_url, path)) == 1
    await owner.aclose()
    await other.aclose()


async def test_a_21_mb_text_upload_is_refused_for_its_type(gateway: Gateway, db_url: str) -> None:
    user = new_user(gateway)
    transport = await signed_in(gateway, user)
    path = f"{user.id}/sources/notes.txt"
    with pytest.raises(
        errors.PortraitkitError, match="mime type text/plain is not supported"
    ) as caught:
        await transport.storage().put(path, b"x" * (21 * MB), "text/plain")
    assert (caught.value.code, caught.value.details["status"]) == ("invalid_image", "415")
    assert storage_rows(db_url, path) == []
    await transport.aclose()


async def test_a_21_mb_image_upload_is_payload_too_large(gateway: Gateway, db_url: str) -> None:
    user = new_user(gateway)
    transport = await signed_in(gateway, user)
    path = f"{user.id}/sources/huge.png"
    with pytest.raises(errors.PortraitkitError, match="exceeded the maximum") as caught:
        await transport.storage().put(path, b"x" * (21 * MB), "image/png")
    assert caught.value.details["status"] == "413"
    assert storage_rows(db_url, path) == []
    await transport.aclose()


async def test_storage_errors_have_storages_shape(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    """HTTP 400, and the meaningful status in the body's statusCode, as Storage answers."""
    user = new_user(gateway)
    token = gateway.issue_session(user)["access_token"]
    answer = await http.post(
        f"/storage/v1/object/portraits/{user.id}/notes.txt",
        files={"file": ("notes.txt", b"hello", "text/plain")},
        headers=headers(gateway.anon_key, token),
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "statusCode": "415",
        "code": "InvalidMimeType",
        "error": "invalid_mime_type",
        "message": "mime type text/plain is not supported",
    }


async def test_sql_cannot_delete_storage_objects_behind_storages_back(
    gateway: Gateway, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("delete from storage.objects")
