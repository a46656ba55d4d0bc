"""One behaviour suite for the client, run over both transports against the real database.

`postgres`: the direct transport with a local identity (JWT signed with the local secret).
`supabase`: supabase-py over HTTP, routed by respx to tests/gateway.py, which does what
PostgREST, Supabase Auth and Storage do, so the same SQL runs underneath.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image

from portraitkit import errors
from portraitkit.auth import create_local_user, issue_service_token
from portraitkit.client import PortraitClient, SyncPortraitClient
from portraitkit.database import rpc
from portraitkit.errors import InvalidImage
from portraitkit.models import BatchStatus, GenerationStatus
from portraitkit.session import LocalTokens
from portraitkit.storage import LocalStorage
from portraitkit.transports.base import RetryPolicy
from portraitkit.transports.postgres import PostgresTransport, make_pool
from portraitkit.transports.supabase import SupabaseTransport

pytestmark = pytest.mark.anyio

SECRET = "portraitkit-client-test-secret-with-32-bytes-or-more"
BASE_URL = "https://portraitkit-client-test.supabase.co"
PASSWORD = "correct horse battery staple"
MakeClient = Callable[..., Awaitable[PortraitClient]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def png(width: int = 320, height: int = 400, seed: int = 0) -> bytes:
    image = Image.new("RGB", (width, height), (40 + seed, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(params=["postgres", "supabase"])
async def make_client(
    request: pytest.FixtureRequest, db_url: str, tmp_path: Path
) -> AsyncIterator[MakeClient]:
    """make_client(credits) -> a signed-in client for a new user, over this run's transport."""
    clients: list[PortraitClient] = []
    if request.param == "postgres":
        pool = make_pool(db_url, max_size=4)
        await pool.open()

        async def make(credits: int = 30) -> PortraitClient:
            with psycopg.connect(db_url, autocommit=True) as conn:
                user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", credits)
            client = PortraitClient(
                PostgresTransport(pool, LocalTokens(SECRET, user), SECRET),
                LocalStorage(tmp_path / "storage"),
            )
            clients.append(client)
            return client
    else:
        from tests.gateway import Gateway

        respx_mock = request.getfixturevalue("respx_mock")
        gateway = Gateway(db_url, SECRET, storage_root=tmp_path / "storage").mount(
            respx_mock, base_url=BASE_URL
        )

        async def make(credits: int = 30) -> PortraitClient:
            user = gateway.add_user(
                f"{uuid.uuid4().hex[:10]}@example.test", PASSWORD, credits=credits
            )
            transport = await SupabaseTransport.sign_in(
                BASE_URL,
                gateway.anon_key,
                user.email,
                PASSWORD,
                retry=RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.002),
            )
            client = PortraitClient(transport, transport.storage())
            clients.append(client)
            return client

    yield make
    for client in clients:
        await client.aclose()
    if request.param == "postgres":
        await pool.close()
    else:
        gateway.close()


def service_call(db_url: str, function: str, **args: Any) -> Any:
    """The worker's side, done directly: what a worker would do to the queue."""
    with psycopg.connect(db_url, prepare_threshold=None) as conn:
        return rpc.call(conn, function, args, claims={"role": "service_role"})


def finish_items(db_url: str, batch_id: uuid.UUID, outcomes: list[str]) -> None:
    """Claim this batch's items and complete or fail them in order."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "update public.generations set status = 'cancelled'"
            " where status = 'pending' and batch_id <> %s",
            (batch_id,),
        )
    claimed = sorted(
        service_call(db_url, "claim_generations", worker_id="t", max_items=50),
        key=lambda r: r["style_key"],
    )
    claimed = [c for c in claimed if str(c["batch_id"]) == str(batch_id)]
    for item, outcome in zip(claimed, outcomes, strict=False):
        if outcome == "completed":
            service_call(
                db_url,
                "complete_generation",
                worker_id="t",
                generation_id=item["id"],
                image_path=f"{item['user_id']}/{batch_id}/{item['id']}.png",
            )
        else:
            service_call(
                db_url,
                "fail_generation",
                worker_id="t",
                generation_id=item["id"],
                error="model error",
                retryable=False,
            )


async def gallery_script(client: PortraitClient) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """The README's script: upload a photo, create a batch, list the gallery."""
    batch_id = await client.create_batch(
        ["pencil_sketch", "pop_art"], png(), custom_prompt="smiling"
    )
    page = await client.list_batches()
    return batch_id, [b.id for b in page.items]


async def test_same_script_creates_and_lists(make_client: MakeClient) -> None:
    client = await make_client()
    batch_id, listed = await gallery_script(client)
    assert listed == [batch_id]
    assert await client.balance() == 30 - 3


async def test_styles_are_the_active_catalogue_in_order(make_client: MakeClient) -> None:
    styles = await (await make_client()).styles()
    assert len(styles) >= 12
    keys = [(s.category, s.sort_order) for s in styles]
    assert keys == sorted(keys)
    assert {s.credit_cost for s in styles} <= set(range(1, 101))


async def test_upload_source_stores_under_the_users_folder(make_client: MakeClient) -> None:
    client = await make_client()
    path = await client.upload_source(png())
    assert path.startswith(f"{client.user_id}/sources/") and path.endswith(".png")
    assert client.storage is not None and await client.storage.get(path) == png()
    assert await client.upload_source(png()) == path  # same photo, same object


async def test_bad_image_is_refused_before_any_charge(make_client: MakeClient) -> None:
    client = await make_client()
    with pytest.raises(InvalidImage):
        await client.create_batch(["poster"], b"not an image")
    with pytest.raises(InvalidImage):
        await client.create_batch(["poster"], png(20, 20))
    assert await client.balance() == 30
    assert (await client.list_batches()).items == []


async def test_get_batch_shows_items(make_client: MakeClient) -> None:
    client = await make_client()
    batch_id = await client.create_batch(["noir", "poster"], png())
    batch = await client.get_batch(batch_id)
    assert batch.id == batch_id and batch.status is BatchStatus.PENDING
    assert [(i.style_key, i.style_name, i.status) for i in batch.items] == [
        ("noir", "Film Noir", GenerationStatus.PENDING),
        ("poster", "Poster", GenerationStatus.PENDING),
    ]
    assert (batch.total_count, batch.completed_count, batch.progress) == (2, 0, 0)


async def test_list_pages_filters_and_iterates(make_client: MakeClient) -> None:
    client = await make_client(credits=100)
    made = [await client.create_batch(["poster"], png()) for _ in range(5)]
    await client.cancel_batch(made[1])
    first = await client.list_batches(page_size=2)
    assert [b.id for b in first.items] == made[::-1][:2] and first.next_cursor
    second = await client.list_batches(page_size=2, after=first.next_cursor)
    assert [b.id for b in second.items] == made[::-1][2:4]
    assert [b.id async for b in client.iter_batches(page_size=2)] == made[::-1]
    cancelled = await client.list_batches(status=BatchStatus.CANCELLED)
    assert [b.id for b in cancelled.items] == [made[1]]


async def test_cancel_refunds_pending(make_client: MakeClient) -> None:
    client = await make_client()
    batch_id = await client.create_batch(["oil_painting", "poster"], png())
    result = await client.cancel_batch(batch_id)
    assert (result.cancelled, result.refunded, result.status) == (2, 4, BatchStatus.CANCELLED)
    assert await client.balance() == 30
    with pytest.raises(errors.BatchFinished):
        await client.cancel_batch(batch_id)


async def test_retry_failed_charges_again(make_client: MakeClient, db_url: str) -> None:
    client = await make_client()
    batch_id = await client.create_batch(["noir", "poster"], png())
    finish_items(db_url, batch_id, ["completed", "failed"])  # noir completes, poster fails
    assert (await client.get_batch(batch_id)).status is BatchStatus.PARTIAL
    assert await client.balance() == 29
    result = await client.retry_failed(batch_id)
    assert (result.retried, result.charged, result.status) == (1, 1, BatchStatus.PROCESSING)
    assert await client.balance() == 28
    with pytest.raises(errors.NothingToRetry):
        await client.retry_failed(batch_id)


async def test_delete_removes_batch_and_its_images(make_client: MakeClient, db_url: str) -> None:
    client = await make_client()
    batch_id = await client.create_batch(["noir"], png())
    finish_items(db_url, batch_id, ["completed"])
    image = (await client.get_batch(batch_id)).items[0].generated_image_url
    assert image is not None and client.storage is not None
    await client.storage.put(image, png(seed=9), "image/png")  # what the worker stored
    result = await client.delete_batch(batch_id)
    assert result.deleted and result.image_paths == [image]
    with pytest.raises(errors.NotFound):
        await client.storage.get(image)
    with pytest.raises(errors.BatchNotFound):
        await client.get_batch(batch_id)


async def test_stats(make_client: MakeClient, db_url: str) -> None:
    client = await make_client()
    batch_id = await client.create_batch(["noir", "poster"], png())
    finish_items(db_url, batch_id, ["completed", "failed"])
    stats = await client.stats()
    assert (stats.batches, stats.items, stats.completed, stats.failed) == (1, 2, 1, 1)
    assert stats.success_rate == 0.5
    assert (stats.credits_spent, stats.credits_refunded, stats.balance) == (2, 1, 29)


ERROR_CASES: list[tuple[str, dict[str, Any], type[errors.PortraitkitError]]] = [
    ("empty", {"style_keys": []}, errors.EmptyStyleList),
    ("too many", {"style_keys": [f"s{i}" for i in range(25)]}, errors.TooManyStyles),
    ("duplicate", {"style_keys": ["poster", "poster"]}, errors.DuplicateStyle),
    ("unknown", {"style_keys": ["nope"]}, errors.UnknownStyle),
    ("prompt", {"custom_prompt": "x" * 600}, errors.PromptTooLong),
    (
        "credits",
        {"style_keys": ["oil_painting"] * 1 + ["impressionist", "watercolor"]},
        errors.InsufficientCredits,
    ),
]


@pytest.mark.parametrize(
    ("case", "override", "error"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
async def test_every_create_error_is_typed(
    make_client: MakeClient,
    case: str,
    override: dict[str, Any],
    error: type[errors.PortraitkitError],
) -> None:
    client = await make_client(credits=5)
    args: dict[str, Any] = {"style_keys": ["poster"], "source": f"{client.user_id}/sources/x.png"}
    args.update(override)
    with pytest.raises(error) as caught:
        await client.create_batch(**args)
    assert caught.value.code == error.code and caught.value.message
    assert await client.balance() == 5


async def test_insufficient_credits_keeps_details(make_client: MakeClient) -> None:
    client = await make_client(credits=2)
    with pytest.raises(errors.InsufficientCredits) as caught:
        await client.create_batch(["oil_painting"], f"{client.user_id}/sources/x.png")
    assert caught.value.details == {"required": 3, "available": 2}
    assert caught.value.http_status == 402


async def test_idempotency_key_makes_one_batch(make_client: MakeClient) -> None:
    client = await make_client()
    first = await client.create_batch(["poster"], png(), idempotency_key="tap-1")
    assert await client.create_batch(["poster"], png(), idempotency_key="tap-1") == first
    assert await client.balance() == 29
    with pytest.raises(errors.IdempotencyConflict):
        await client.create_batch(["noir"], png(), idempotency_key="tap-1")


async def test_another_users_batch_is_out_of_reach(make_client: MakeClient) -> None:
    alice, mallory = await make_client(), await make_client()
    batch_id = await alice.create_batch(["poster"], png())
    assert (await mallory.list_batches()).items == []
    for call in (
        mallory.get_batch,
        mallory.cancel_batch,
        mallory.retry_failed,
        mallory.delete_batch,
    ):
        with pytest.raises(errors.BatchNotFound):
            await call(batch_id)
    assert (await mallory.stats()).batches == 0
    assert (await alice.get_batch(batch_id)).status is BatchStatus.PENDING


async def test_user_cannot_reach_worker_functions(make_client: MakeClient) -> None:
    client = await make_client()
    with pytest.raises(errors.NotAllowed):
        await client.transport.rpc("claim_generations", {"worker_id": "me"})


def test_sync_facade_runs_the_same_calls(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", 10)
    pool = make_pool(db_url, max_size=2)
    client = PortraitClient(
        PostgresTransport(pool, LocalTokens(SECRET, user), SECRET, owns_pool=True),
        LocalStorage(tmp_path),
    )
    with SyncPortraitClient(client) as sync:
        sync._run(pool.open())
        batch_id = sync.create_batch(["poster", "noir"], png())
        assert [b.id for b in sync.iter_batches()] == [batch_id]
        assert sync.get_batch(batch_id).total_count == 2
        assert sync.balance() == 8
        assert sync.cancel_batch(batch_id).refunded == 2


def test_service_token_is_not_a_user(db_url: str) -> None:
    token = issue_service_token(SECRET)
    transport = PostgresTransport(make_pool(db_url), lambda: token, SECRET)
    assert transport.user_id is None
    with pytest.raises(errors.NotAuthenticated):
        _ = PortraitClient(transport).user_id


async def test_direct_postgres_resends_only_what_is_safe_after_a_dropped_connection(
    db_url: str, tmp_path: Path
) -> None:
    """The server drops every connection of the pool (a restart, a pooler recycling them):
    reads and creates are sent again on a fresh connection, charged once; a cancel, not
    safe to repeat blindly, fails as DatabaseUnavailable and the caller decides."""
    name = f"pk-drop-{uuid.uuid4().hex[:8]}"
    pool = make_pool(psycopg.conninfo.make_conninfo(db_url, application_name=name), max_size=2)
    await pool.open(wait=True)
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = create_local_user(conn, f"{uuid.uuid4().hex[:10]}@example.test", 30)
    transport = PostgresTransport(
        pool, LocalTokens(SECRET, user), SECRET, retry=RetryPolicy(2, 0.001, 0.002)
    )
    client = PortraitClient(transport, LocalStorage(tmp_path / "storage"))

    def drop_connections() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            dropped = conn.execute(
                "select count(*) filter (where pg_terminate_backend(pid))"
                " from pg_stat_activity where application_name = %s",
                (name,),
            ).fetchone()
        assert dropped is not None and dropped[0] >= 1

    try:
        batch_id = await client.create_batch(["poster"], png())
        drop_connections()
        assert [b.id for b in (await client.list_batches()).items] == [batch_id]
        drop_connections()
        second = await client.create_batch(["noir"], png())
        assert await client.balance() == 30 - 2  # two batches, each charged once
        drop_connections()
        with pytest.raises(errors.DatabaseUnavailable):
            await client.cancel_batch(second)
        assert (await client.get_batch(second)).status is BatchStatus.PENDING
    finally:
        await client.aclose()
        await pool.close()
