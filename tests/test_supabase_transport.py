"""The hosted boundary: supabase-py over HTTP, through tests/gateway.py, to the real database.

Each failure a phone or a worker meets on the way to a Supabase project (an expired token,
a 503, a dropped connection, a timeout) and every error code of the contract, checked
end to end: the SQL really runs, so "charged once" is read from the ledger.
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

from portraitkit import errors
from portraitkit.auth import LocalUser
from portraitkit.client import PortraitClient
from portraitkit.errors import ObjectNotFound, TransportTimeout
from portraitkit.transports.base import RetryPolicy
from portraitkit.transports.supabase import SupabaseTransport
from tests.gateway import Gateway, create_supabase_database, drop_database

pytestmark = pytest.mark.anyio

BASE_URL = "https://portraitkit-test.supabase.co"
SECRET = "portraitkit-gateway-test-secret-with-32-bytes-or-more"
PASSWORD = "correct horse battery staple"
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.004)
SOURCE = "sources/photo.jpg"  # prefixed with the user's id where used

UNAVAILABLE_503 = httpx.Response(
    503,
    json={
        "code": "PGRST001",
        "message": "Database client error. Retrying the connection.",
        "details": None,
        "hint": None,
    },
)
PROXY_502 = httpx.Response(502, text="<html><body>502 Bad Gateway</body></html>")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    """A database of this module's own, shaped like a Supabase project (Storage's schema,
    so the bucket policies run), with one retired style."""
    url = create_supabase_database(database_url, f"t_supabase_transport_{uuid.uuid4().hex[:6]}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into public.styles (key, name, category, credit_cost, prompt_template,"
            " is_active) values ('retired_style', 'Retired', 'Old', 1, '{prompt}', false)"
        )
    yield url
    drop_database(database_url, url)


@pytest.fixture
def gateway(db_url: str, respx_mock: respx.MockRouter, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(db_url, SECRET, storage_root=tmp_path).mount(respx_mock, base_url=BASE_URL)
    yield gw
    gw.close()


@pytest.fixture
def user(gateway: Gateway) -> LocalUser:
    return gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=10)


async def sign_in_with_a_photo(gateway: Gateway, user: LocalUser) -> SupabaseTransport:
    """The user, signed in, with their source photo in Storage (a batch needs one)."""
    signed_in = await SupabaseTransport.sign_in(
        BASE_URL, gateway.anon_key, user.email, PASSWORD, retry=FAST
    )
    await signed_in.storage().put(f"{user.id}/{SOURCE}", b"a photo", "image/jpeg")
    return signed_in


@pytest.fixture
async def transport(gateway: Gateway, user: LocalUser) -> AsyncIterator[SupabaseTransport]:
    signed_in = await sign_in_with_a_photo(gateway, user)
    gateway.requests.clear()
    yield signed_in
    await signed_in.aclose()


@pytest.fixture
async def service(gateway: Gateway) -> AsyncIterator[SupabaseTransport]:
    worker = await SupabaseTransport.service(BASE_URL, gateway.service_key, retry=FAST)
    yield worker
    await worker.aclose()


def rpc_path(function: str) -> str:
    return f"/rest/v1/rpc/{function}"


async def create(transport: SupabaseTransport, *style_keys: str, key: str | None = None) -> str:
    batch_id = await transport.rpc(
        "create_generation_batch",
        {
            "style_keys": list(style_keys),
            "source_image_path": f"{transport.user_id}/{SOURCE}",
            "idempotency_key": key or f"test-{uuid.uuid4()}",
        },
        retry_safe=True,
    )
    return str(batch_id)


def ledger(db_url: str, user: LocalUser) -> tuple[int, list[tuple[str, int]]]:
    with psycopg.connect(db_url) as conn:
        balance = conn.execute(
            "select total_credits from public.profiles where id = %s", (user.id,)
        ).fetchone()
        entries = conn.execute(
            "select kind::text, delta from public.credit_ledger where user_id = %s order by id",
            (user.id,),
        ).fetchall()
    assert balance is not None
    return balance[0], [(kind, delta) for kind, delta in entries]


# -- identity and sessions ------------------------------------------------------------------


async def test_sign_in_acts_as_the_user(transport: SupabaseTransport, user: LocalUser) -> None:
    assert transport.user_id == str(user.id)
    rows = await transport.select("profiles", columns=("id", "total_credits"))
    assert rows == [{"id": str(user.id), "total_credits": 10}]


async def test_sign_in_with_a_wrong_password_is_not_authenticated(
    gateway: Gateway, user: LocalUser
) -> None:
    with pytest.raises(errors.NotAuthenticated, match="Invalid login credentials"):
        await SupabaseTransport.sign_in(BASE_URL, gateway.anon_key, user.email, "wrong")


async def test_an_expired_token_is_refreshed_once_and_the_call_succeeds(
    gateway: Gateway, user: LocalUser
) -> None:
    expired = gateway.issue_session(user, ttl=-60)
    transport = await SupabaseTransport.from_access_token(
        BASE_URL, gateway.anon_key, expired["access_token"], expired["refresh_token"], retry=FAST
    )
    stats = await transport.rpc("batch_stats", retry_safe=True)
    assert stats["balance"] == 10
    assert gateway.count("POST", "/auth/v1/token") == 1
    assert gateway.count("POST", rpc_path("batch_stats")) == 2
    # The refreshed session is used from then on: no second refresh.
    await transport.rpc("batch_stats", retry_safe=True)
    assert gateway.count("POST", "/auth/v1/token") == 1
    await transport.aclose()


async def test_a_failed_refresh_is_not_authenticated(gateway: Gateway, user: LocalUser) -> None:
    expired = gateway.issue_session(user, ttl=-60)
    transport = await SupabaseTransport.from_access_token(
        BASE_URL, gateway.anon_key, expired["access_token"], "revoked-refresh-token", retry=FAST
    )
    with pytest.raises(errors.NotAuthenticated, match="Refresh Token Not Found"):
        await transport.rpc("batch_stats", retry_safe=True)
    assert gateway.count("POST", "/auth/v1/token") == 1
    await transport.aclose()


async def test_a_token_refused_after_its_refresh_is_not_authenticated(
    gateway: Gateway, user: LocalUser
) -> None:
    expired = gateway.issue_session(user, ttl=-60)
    gateway.access_token_ttl = -60  # the refreshed token is already expired too
    transport = await SupabaseTransport.from_access_token(
        BASE_URL, gateway.anon_key, expired["access_token"], expired["refresh_token"], retry=FAST
    )
    with pytest.raises(errors.NotAuthenticated, match="JWT expired"):
        await transport.rpc("batch_stats", retry_safe=True)
    assert gateway.count("POST", "/auth/v1/token") == 1
    assert gateway.count("POST", rpc_path("batch_stats")) == 2
    await transport.aclose()


async def test_an_expired_token_without_refresh_token_is_not_authenticated(
    gateway: Gateway, user: LocalUser
) -> None:
    expired = gateway.issue_session(user, ttl=-60)
    transport = await SupabaseTransport.from_access_token(
        BASE_URL, gateway.anon_key, expired["access_token"], retry=FAST
    )
    with pytest.raises(errors.NotAuthenticated):
        await transport.rpc("batch_stats", retry_safe=True)
    assert gateway.count("POST", "/auth/v1/token") == 0
    await transport.aclose()


# -- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [UNAVAILABLE_503, PROXY_502, "drop", "drop_after", "timeout"],
    ids=["503-PGRST001", "502-proxy", "drop", "drop-after", "timeout"],
)
async def test_a_read_is_retried_after_a_transient_failure(
    gateway: Gateway, transport: SupabaseTransport, fault: Any
) -> None:
    gateway.fail(rpc_path("list_batches"), fault)
    page = await transport.rpc("list_batches", {"page_size": 5}, retry_safe=True)
    assert page == {"items": [], "next_cursor": None}
    assert gateway.count("POST", rpc_path("list_batches")) == 2


async def test_a_table_read_is_retried_after_a_dropped_connection(
    gateway: Gateway, transport: SupabaseTransport, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        active = conn.execute(
            "select key from public.styles where is_active order by category, key"
        ).fetchall()
    gateway.fail("/rest/v1/styles", "drop")
    styles = await transport.select("styles", columns=("key",), order=("category", "key"))
    assert styles == [{"key": key} for (key,) in active]
    assert gateway.count("GET", "/rest/v1/styles") == 2


async def test_a_create_whose_answer_was_lost_is_retried_and_charged_once(
    gateway: Gateway, transport: SupabaseTransport, user: LocalUser, db_url: str
) -> None:
    gateway.fail(rpc_path("create_generation_batch"), "drop_after")
    client = PortraitClient(transport)
    batch_id = await client.create_batch(["pencil_sketch", "ink_wash"], f"{user.id}/{SOURCE}")
    assert gateway.count("POST", rpc_path("create_generation_batch")) == 2
    assert ledger(db_url, user) == (7, [("debit", -3)])
    assert [b.id for b in (await client.list_batches()).items] == [batch_id]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (UNAVAILABLE_503, errors.DatabaseUnavailable),
        ("drop", errors.DatabaseUnavailable),
        ("drop_after", errors.DatabaseUnavailable),
        ("timeout", TransportTimeout),
    ],
    ids=["503", "drop", "drop-after", "timeout"],
)
async def test_cancel_is_never_resent(
    gateway: Gateway, transport: SupabaseTransport, fault: Any, error: type[Exception]
) -> None:
    batch_id = await create(transport, "charcoal")
    gateway.fail(rpc_path("cancel_batch"), fault)
    with pytest.raises(error):
        await transport.rpc("cancel_batch", {"batch_id": batch_id})
    assert gateway.count("POST", rpc_path("cancel_batch")) == 1


async def test_a_timeout_surfaces_after_the_safe_retries(
    gateway: Gateway, transport: SupabaseTransport
) -> None:
    gateway.fail(rpc_path("batch_stats"), "timeout", "timeout", "timeout")
    with pytest.raises(TransportTimeout) as caught:
        await transport.rpc("batch_stats", retry_safe=True)
    assert (caught.value.code, caught.value.http_status) == ("timeout", 504)
    assert gateway.count("POST", rpc_path("batch_stats")) == FAST.attempts


async def test_a_lasting_outage_surfaces_after_the_safe_retries(
    gateway: Gateway, transport: SupabaseTransport
) -> None:
    gateway.fail(rpc_path("batch_stats"), UNAVAILABLE_503, PROXY_502, UNAVAILABLE_503)
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        await transport.rpc("batch_stats", retry_safe=True)
    assert caught.value.details == {"code": "PGRST001", "http_status": 503}
    assert gateway.count("POST", rpc_path("batch_stats")) == FAST.attempts


async def test_a_pool_timeout_is_a_transport_timeout(
    gateway: Gateway, transport: SupabaseTransport
) -> None:
    pool_timeout = httpx.Response(
        504,
        json={
            "code": "PGRST003",
            "message": "Timed out acquiring connection from connection pool.",
            "details": None,
            "hint": None,
        },
    )
    gateway.fail(rpc_path("cancel_batch"), pool_timeout)
    with pytest.raises(TransportTimeout, match="Timed out acquiring"):
        await transport.rpc("cancel_batch", {"batch_id": str(uuid.uuid4())})


# -- the contract's errors, typed -----------------------------------------------------------


async def test_insufficient_credits_carries_required_and_available(
    transport: SupabaseTransport, user: LocalUser, db_url: str
) -> None:
    with pytest.raises(errors.InsufficientCredits) as caught:
        await create(
            transport, "oil_painting", "impressionist", "watercolor", "ink_wash", "charcoal"
        )
    assert caught.value.details == {"required": 11, "available": 10}
    assert ledger(db_url, user) == (10, [])


@pytest.mark.parametrize(
    ("style_keys", "error", "details"),
    [
        ([], errors.EmptyStyleList, {}),
        (["charcoal", "charcoal"], errors.DuplicateStyle, {"style_keys": ["charcoal"]}),
        (["charcoal", "no_such_style"], errors.UnknownStyle, {"style_keys": ["no_such_style"]}),
        (["retired_style"], errors.InactiveStyle, {"style_keys": ["retired_style"]}),
        ([f"s{i:02d}" for i in range(21)], errors.TooManyStyles, {"max": 20, "given": 21}),
    ],
    ids=["empty", "duplicate", "unknown", "inactive", "too-many"],
)
async def test_bad_style_lists_raise_their_typed_error(
    transport: SupabaseTransport,
    style_keys: list[str],
    error: type[errors.PortraitkitError],
    details: dict[str, Any],
) -> None:
    with pytest.raises(error) as caught:
        await create(transport, *style_keys)
    assert type(caught.value) is error
    assert caught.value.details == details


async def test_a_long_prompt_is_prompt_too_long(transport: SupabaseTransport) -> None:
    with pytest.raises(errors.PromptTooLong) as caught:
        await transport.rpc(
            "create_generation_batch",
            {
                "style_keys": ["charcoal"],
                "source_image_path": f"{transport.user_id}/{SOURCE}",
                "custom_prompt": "x" * 501,
            },
        )
    assert caught.value.details == {"max": 500, "given": 501}


async def test_a_blank_source_path_is_invalid_input(transport: SupabaseTransport) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        await transport.rpc(
            "create_generation_batch", {"style_keys": ["charcoal"], "source_image_path": " "}
        )
    assert caught.value.details == {"field": "source_image_path", "reason": "blank"}


async def test_a_reused_idempotency_key_is_a_conflict(transport: SupabaseTransport) -> None:
    await create(transport, "charcoal", key="same-key")
    with pytest.raises(errors.IdempotencyConflict):
        await create(transport, "ink_wash", key="same-key")


async def test_another_users_batch_is_not_found(
    gateway: Gateway, transport: SupabaseTransport
) -> None:
    other = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD)
    other_transport = await sign_in_with_a_photo(gateway, other)
    theirs = await create(other_transport, "charcoal")
    await other_transport.aclose()
    with pytest.raises(errors.BatchNotFound) as caught:
        await transport.rpc("get_batch", {"batch_id": theirs}, retry_safe=True)
    assert caught.value.http_status == 404


async def test_cancelling_an_ended_batch_is_batch_finished(transport: SupabaseTransport) -> None:
    batch_id = await create(transport, "charcoal")
    await transport.rpc("cancel_batch", {"batch_id": batch_id})
    with pytest.raises(errors.BatchFinished):
        await transport.rpc("cancel_batch", {"batch_id": batch_id})


async def test_retrying_a_batch_without_failures_is_nothing_to_retry(
    transport: SupabaseTransport,
) -> None:
    batch_id = await create(transport, "charcoal")
    with pytest.raises(errors.NothingToRetry):
        await transport.rpc("retry_failed", {"batch_id": batch_id})


async def test_a_signed_in_role_without_a_user_is_not_authenticated(gateway: Gateway) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"role": "authenticated", "aud": "authenticated", "exp": now + 60},
        SECRET,
        algorithm="HS256",
    )
    transport = await SupabaseTransport.from_access_token(BASE_URL, gateway.anon_key, token)
    with pytest.raises(errors.NotAuthenticated):
        await create(transport, "charcoal")
    await transport.aclose()


async def test_granting_to_an_unknown_user_is_profile_not_found(
    service: SupabaseTransport,
) -> None:
    with pytest.raises(errors.ProfileNotFound):
        await service.rpc("grant_credits", {"user_id": str(uuid.uuid4()), "amount": 5})


async def test_a_user_calling_a_worker_function_is_not_allowed(
    transport: SupabaseTransport,
) -> None:
    with pytest.raises(errors.NotAllowed) as caught:
        await transport.rpc("claim_generations", {"worker_id": "w1"})
    assert "permission denied" in caught.value.message


async def test_an_anonymous_caller_of_a_user_function_is_not_authenticated(
    gateway: Gateway,
) -> None:
    # PostgREST answers 42501 with 401 for the anon role, and 401 means "sign in".
    anonymous = await SupabaseTransport.connect(BASE_URL, gateway.anon_key)
    with pytest.raises(errors.NotAuthenticated):
        await anonymous.rpc("batch_stats", retry_safe=True)
    await anonymous.aclose()


async def test_an_anonymous_caller_reads_the_active_catalogue(gateway: Gateway) -> None:
    anonymous = await SupabaseTransport.connect(BASE_URL, gateway.anon_key)
    keys = [row["key"] for row in await anonymous.select("styles", columns=("key",))]
    assert "charcoal" in keys
    assert "retired_style" not in keys
    await anonymous.aclose()


async def test_an_unknown_function_keeps_postgrests_code(transport: SupabaseTransport) -> None:
    with pytest.raises(errors.PortraitkitError) as caught:
        await transport.rpc("no_such_function", retry_safe=True)
    assert (caught.value.code, caught.value.http_status) == ("PGRST202", 404)


async def test_the_worker_grants_credits_as_service_role(
    service: SupabaseTransport, user: LocalUser, db_url: str
) -> None:
    assert service.user_id is None
    await service.rpc("grant_credits", {"user_id": str(user.id), "amount": 5, "note": "promo"})
    assert ledger(db_url, user) == (15, [("grant", 5)])


# -- storage --------------------------------------------------------------------------------


async def test_storage_round_trip_in_the_users_folder(
    transport: SupabaseTransport, user: LocalUser
) -> None:
    storage = transport.storage()
    path = f"{user.id}/sources/photo.png"
    await storage.put(path, b"first", "image/png")
    await storage.put(path, b"second", "image/png")  # upsert: same photo, same path
    assert await storage.get(path) == b"second"
    url = await storage.url(path, expires_in=60)
    assert url.startswith(f"{BASE_URL}/storage/v1/object/sign/portraits/{path}?token=")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == b"second"
    await storage.remove([path])
    with pytest.raises(ObjectNotFound) as caught:
        await storage.get(path)
    assert caught.value.details["status"] == "404"


async def test_storage_refuses_another_users_folder(
    transport: SupabaseTransport, gateway: Gateway
) -> None:
    other = gateway.add_user(f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD)
    with pytest.raises(errors.NotAllowed) as caught:
        await transport.storage().put(f"{other.id}/sources/photo.png", b"x", "image/png")
    assert caught.value.details["status"] == "403"
