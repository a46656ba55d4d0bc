"""The worker in-process against the real database: outcomes as the SQL contract says."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from portraitkit.errors import PermanentGenerationError, RetryableGenerationError
from portraitkit.generators import GeneratedImage, GenerationRequest, get_generator
from portraitkit.generators.sample import sample_portrait_png
from portraitkit.models import BatchStatus, GenerationStatus

pytestmark = pytest.mark.anyio

ALL_STYLES = [
    "pencil_sketch",
    "charcoal",
    "ink_wash",
    "watercolor",
    "oil_painting",
    "impressionist",
    "pop_art",
    "comic_halftone",
    "poster",
    "pixel_art",
    "neon_glow",
    "cartoon",
    "vintage_photo",
    "noir",
    "cyanotype",
]


def pixels(data: bytes, size: tuple[int, int] = (96, 120)) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize(size), dtype=np.float32)


async def test_every_style_becomes_a_real_image(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any], admin: Any, settings: Any
) -> None:
    client = make_client(credits=100)
    source = sample_portrait_png()
    batch_id = await client.create_batch(ALL_STYLES, source)
    async with worker_factory(get_generator, concurrency=2) as worker:
        stats = await asyncio.wait_for(worker.run(once=True), timeout=120)
    assert (stats.completed, stats.failed, stats.retried) == (len(ALL_STYLES), 0, 0)
    batch = await client.get_batch(batch_id)
    assert batch.status is BatchStatus.COMPLETED and batch.completed_count == len(ALL_STYLES)
    assert batch.progress == 100 and batch.cover_image_url is not None
    images = {}
    for item in batch.items:
        assert item.status is GenerationStatus.COMPLETED and item.attempts == 1
        assert item.started_at and item.finished_at and item.duration_ms is not None
        assert item.generated_image_url == f"{client.user_id}/{batch_id}/{item.id}-1.png"
        data = await client.storage.get(item.generated_image_url)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and max(image.size) <= 1024 and min(image.size) >= 64
        images[item.style_key] = pixels(data)
    original = pixels(source)
    for key, image in images.items():
        assert np.abs(image - original).mean() > 8, f"{key} looks like the source"
    for (a, x), (b, y) in itertools.combinations(images.items(), 2):
        assert np.abs(x - y).mean() > 4, f"{a} and {b} look alike"
    stats_after = await client.stats()
    assert (stats_after.completed, stats_after.failed, stats_after.success_rate) == (
        len(ALL_STYLES),
        0,
        1.0,
    )


class Flaky:
    """Fails retryably `failures` times per style, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls[request.style_key] = self.calls.get(request.style_key, 0) + 1
        if self.calls[request.style_key] <= self.failures:
            raise RetryableGenerationError("upstream 503")
        return await get_generator("noop").generate(request)


@pytest.fixture
def fast_retries(admin: Any) -> Any:
    admin.execute("update private.settings set value = '0' where key = 'retry_base_seconds'")
    yield
    admin.execute("update private.settings set value = '5' where key = 'retry_base_seconds'")


async def test_retryable_failure_then_success(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any], fast_retries: Any
) -> None:
    client = make_client()
    batch_id = await client.create_batch(["poster", "noir"], sample_portrait_png())
    flaky = Flaky(failures=2)
    async with worker_factory(lambda _n: flaky) as worker:
        stats = await asyncio.wait_for(worker.run(once=True), timeout=30)
    assert (stats.completed, stats.retried, stats.failed) == (2, 4, 0)
    batch = await client.get_batch(batch_id)
    assert batch.status is BatchStatus.COMPLETED
    assert [i.attempts for i in batch.items] == [3, 3]
    assert await client.balance() == 98


async def test_always_failing_item_ends_failed_and_refunded(
    make_client: Callable[..., Any],
    worker_factory: Callable[..., Any],
    fast_retries: Any,
    admin: Any,
) -> None:
    client = make_client(credits=10)
    batch_id = await client.create_batch(["poster", "oil_painting"], sample_portrait_png())

    class FailsOilPainting:
        async def generate(self, request: GenerationRequest) -> GeneratedImage:
            if request.style_key == "oil_painting":
                raise RetryableGenerationError("model overloaded")
            return await get_generator("noop").generate(request)

    async with worker_factory(lambda _n: FailsOilPainting()) as worker:
        stats = await asyncio.wait_for(worker.run(once=True), timeout=30)
    assert (stats.completed, stats.retried, stats.failed) == (1, 2, 1)
    batch = await client.get_batch(batch_id)
    assert batch.status is BatchStatus.PARTIAL
    failed = next(i for i in batch.items if i.style_key == "oil_painting")
    assert (failed.status, failed.attempts, failed.last_error) == (
        GenerationStatus.FAILED,
        3,
        "model overloaded",
    )
    assert await client.balance() == 10 - 4 + 3
    assert (
        admin.execute(
            "select count(*) as n from public.credit_ledger where generation_id = %s and kind = 'refund'",
            (failed.id,),
        ).fetchone()["n"]
        == 1
    )


async def test_permanent_failure_is_not_retried(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    client = make_client()
    batch_id = await client.create_batch(["poster"], sample_portrait_png())

    class Refuses:
        async def generate(self, request: GenerationRequest) -> GeneratedImage:
            raise PermanentGenerationError("content policy")

    async with worker_factory(lambda _n: Refuses()) as worker:
        stats = await asyncio.wait_for(worker.run(once=True), timeout=30)
    assert (stats.failed, stats.retried) == (1, 0)
    batch = await client.get_batch(batch_id)
    assert batch.status is BatchStatus.FAILED and batch.items[0].attempts == 1


class Gate:
    """Holds every item until released, so a test can act while items are running."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.seen: list[str] = []

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.seen.append(request.style_key)
        self.started.set()
        await self.release.wait()
        return await get_generator("noop").generate(request)


async def test_cancel_during_a_run(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any], settings: Any
) -> None:
    client = make_client(credits=20)
    batch_id = await client.create_batch(
        ["poster", "noir", "pixel_art", "charcoal"], sample_portrait_png()
    )
    gate = Gate()
    async with worker_factory(lambda _n: gate, concurrency=1) as worker:
        run = asyncio.create_task(worker.run(once=True))
        await asyncio.wait_for(gate.started.wait(), 10)
        result = await client.cancel_batch(batch_id)
        assert (result.cancelled, result.refunded) == (3, 3)
        gate.release.set()
        stats = await asyncio.wait_for(run, 30)
    assert gate.seen == ["poster"]  # pending ones never started
    assert stats.completed == 1
    batch = await client.get_batch(batch_id)
    assert (batch.status, batch.completed_count, batch.cancelled_count) == (
        BatchStatus.COMPLETED,
        1,
        3,
    )
    assert await client.balance() == 20 - 4 + 3


async def test_result_of_a_deleted_batch_is_discarded(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any], state_dir: Any
) -> None:
    client = make_client()
    batch_id = await client.create_batch(["poster"], sample_portrait_png())
    gate = Gate()
    async with worker_factory(lambda _n: gate, concurrency=1) as worker:
        run = asyncio.create_task(worker.run(once=True))
        await asyncio.wait_for(gate.started.wait(), 10)
        await client.delete_batch(batch_id)
        gate.release.set()
        stats = await asyncio.wait_for(run, 30)
    assert (stats.completed, stats.discarded) == (0, 1)
    assert not list((state_dir / "storage" / "portraits" / client.user_id).glob(f"{batch_id}/*"))


async def test_stop_releases_unfinished_items(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    client = make_client()
    batch_id = await client.create_batch(["poster", "noir"], sample_portrait_png())
    gate = Gate()
    async with worker_factory(lambda _n: gate, concurrency=2, shutdown_grace_seconds=0.2) as worker:
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(gate.started.wait(), 10)
        worker.stop()
        stats = await asyncio.wait_for(run, 10)
    assert stats.released == 2
    batch = await client.get_batch(batch_id)
    assert batch.status is BatchStatus.PENDING
    assert [i.attempts for i in batch.items] == [0, 0]


async def test_new_work_wakes_an_idle_worker_at_once(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    client = make_client()
    async with worker_factory(lambda _n: get_generator("noop"), poll_seconds=30) as worker:
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)  # idle, listening
        loop = asyncio.get_running_loop()
        started = loop.time()
        batch_id = await client.create_batch(["poster"], sample_portrait_png())
        while (await client.get_batch(batch_id)).status is not BatchStatus.COMPLETED:
            assert loop.time() - started < 5, "the feed did not wake the worker"
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(run, 10)


async def test_a_source_outside_the_owners_folder_is_never_read(
    make_client: Callable[..., Any], worker_factory: Callable[..., Any], admin: Any
) -> None:
    """Defence in depth: a row written some other way (a first-release batch, a manual
    fix) that names another user's photo must not get it stylised for this user."""
    attacker, victim = make_client(), make_client()
    victims_selfie = await victim.upload_source(sample_portrait_png())
    batch_id = await attacker.create_batch(["poster"], sample_portrait_png())
    admin.execute(
        "update public.generation_batches set original_image_url = %s where id = %s",
        (victims_selfie, batch_id),
    )
    seen: list[bytes] = []

    class Records:
        async def generate(self, request: GenerationRequest) -> GeneratedImage:
            seen.append(request.source)
            return await get_generator("noop").generate(request)

    async with worker_factory(lambda _n: Records()) as worker:
        stats = await asyncio.wait_for(worker.run(once=True), timeout=30)
    assert seen == []
    assert (stats.completed, stats.failed, stats.retried) == (0, 1, 0)
    batch = await attacker.get_batch(batch_id)
    assert batch.status is BatchStatus.FAILED
    assert batch.items[0].attempts == 1
    assert "not in its owner's folder" in (batch.items[0].last_error or "")
