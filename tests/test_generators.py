"""Generators: the local effects for every seeded style, the http client's error policy
against a mocked Replicate-shaped API, the factory and the sample portrait. No database."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from PIL import Image

from portraitkit.errors import ConfigurationError
from portraitkit.generators import (
    GeneratedImage,
    GenerationRequest,
    PermanentGenerationError,
    RetryableGenerationError,
    get_generator,
    local,
)
from portraitkit.generators.http import HttpGenerator, retry_after_seconds
from portraitkit.generators.local import LocalGenerator, bounded_size, decode_source
from portraitkit.generators.noop import NOOP_PNG, NoopGenerator
from portraitkit.generators.sample import HEIGHT, WIDTH, sample_portrait, sample_portrait_png
from portraitkit.generators.styles import EFFECTS

STYLES_MIGRATION = (
    Path(__file__).parent.parent / "supabase" / "migrations" / "20261125000300_styles.sql"
)
SEEDED_STYLES = re.findall(r"^\s*\('([a-z][a-z0-9_]+)',", STYLES_MIGRATION.read_text(), re.M)
COMPARE_SIZE = (160, 200)  # every image is compared at this size
MIN_DIFFERENCE = 10.0  # mean absolute difference per channel, 0..255; a 2 px blur scores ~1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sample_png() -> bytes:
    return sample_portrait_png()


@pytest.fixture(scope="module")
def renders(sample_png: bytes) -> dict[str, bytes]:
    """Every seeded style rendered once from the sample portrait."""
    generator = LocalGenerator()
    return {key: _render(generator, sample_png, key).data for key in SEEDED_STYLES}


def _render(
    generator: LocalGenerator, source: bytes, style_key: str, custom_prompt: str | None = None
) -> GeneratedImage:
    request = GenerationRequest(
        source=source, style_key=style_key, prompt="a portrait", custom_prompt=custom_prompt
    )
    return generator.render(request)


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize(COMPARE_SIZE, Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32)


def _difference(a: bytes, b: bytes) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


def _png(width: int, height: int, colour: tuple[int, int, int] = (120, 80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# -- local generator --------------------------------------------------------------------


def test_every_seeded_style_has_a_local_effect() -> None:
    assert len(SEEDED_STYLES) == 15
    assert set(SEEDED_STYLES) == set(EFFECTS)


@pytest.mark.parametrize("style_key", SEEDED_STYLES)
def test_style_renders_a_png_of_the_bounded_size(renders: dict[str, bytes], style_key: str) -> None:
    with Image.open(io.BytesIO(renders[style_key])) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == (614, 768)  # 640x800 scaled to a longest side of 768


@pytest.mark.parametrize("style_key", SEEDED_STYLES)
def test_style_differs_clearly_from_the_source(
    renders: dict[str, bytes], sample_png: bytes, style_key: str
) -> None:
    assert _difference(renders[style_key], sample_png) > MIN_DIFFERENCE


def test_every_style_differs_clearly_from_every_other(renders: dict[str, bytes]) -> None:
    too_close = {
        (a, b): round(_difference(renders[a], renders[b]), 1)
        for a, b in itertools.combinations(SEEDED_STYLES, 2)
        if _difference(renders[a], renders[b]) <= MIN_DIFFERENCE
    }
    assert too_close == {}


@pytest.mark.parametrize("style_key", SEEDED_STYLES)
def test_same_request_gives_identical_bytes(
    renders: dict[str, bytes], sample_png: bytes, style_key: str
) -> None:
    assert _render(LocalGenerator(), sample_png, style_key).data == renders[style_key]


def test_result_is_described_as_png(sample_png: bytes) -> None:
    result = _render(LocalGenerator(max_side=64), sample_png, "noir")
    assert (result.content_type, result.extension) == ("image/png", "png")
    assert result.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_landscape_source_is_bounded_with_its_aspect_kept() -> None:
    result = _render(LocalGenerator(), _png(1000, 500), "cartoon")
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (768, 384)


def test_small_source_is_not_upscaled() -> None:
    result = _render(LocalGenerator(), _png(100, 80), "pixel_art")
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (100, 80)


def test_bounded_size_rounds_to_the_nearest_pixel() -> None:
    assert bounded_size(640, 800, 768) == (614, 768)
    assert bounded_size(4000, 3000, 768) == (768, 576)
    assert bounded_size(300, 200, 768) == (300, 200)


@pytest.mark.parametrize("style_key", SEEDED_STYLES)
def test_tiny_source_still_renders(style_key: str) -> None:
    result = _render(LocalGenerator(), _png(17, 16), style_key)
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (17, 16)


def test_source_below_the_minimum_side_is_permanent() -> None:
    with pytest.raises(PermanentGenerationError):
        _render(LocalGenerator(), _png(8, 200), "noir")


@pytest.mark.anyio
async def test_unknown_style_is_permanent(sample_png: bytes) -> None:
    request = GenerationRequest(source=sample_png, style_key="claymation", prompt="a portrait")
    with pytest.raises(PermanentGenerationError) as caught:
        await LocalGenerator().generate(request)
    assert caught.value.details["style_key"] == "claymation"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "source",
    [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64],
    ids=["empty", "text", "png-header-only"],
)
async def test_corrupt_source_is_permanent(source: bytes) -> None:
    request = GenerationRequest(source=source, style_key="noir", prompt="a portrait")
    with pytest.raises(PermanentGenerationError):
        await LocalGenerator().generate(request)


@pytest.mark.anyio
async def test_truncated_source_is_permanent(sample_png: bytes) -> None:
    request = GenerationRequest(
        source=sample_png[: len(sample_png) // 2], style_key="noir", prompt="a portrait"
    )
    with pytest.raises(PermanentGenerationError):
        await LocalGenerator().generate(request)


@pytest.mark.anyio
async def test_generate_leaves_the_event_loop_free(sample_png: bytes) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    request = GenerationRequest(source=sample_png, style_key="oil_painting", prompt="x")
    await LocalGenerator().generate(request)
    task.cancel()
    assert ticks >= 3  # the loop kept running while the thread rendered


def test_colour_word_in_custom_prompt_tints_deterministically(
    renders: dict[str, bytes], sample_png: bytes
) -> None:
    generator = LocalGenerator()
    first = _render(generator, sample_png, "noir", custom_prompt="in warm golden light")
    second = _render(generator, sample_png, "noir", custom_prompt="in warm golden light")
    assert first.data == second.data
    assert first.data != renders["noir"]
    red, _green, blue = _pixels(first.data).mean(axis=(0, 1))
    assert red > blue  # a warm cast on a black-and-white style


def test_custom_prompt_without_colour_words_changes_nothing(
    renders: dict[str, bytes], sample_png: bytes
) -> None:
    result = _render(LocalGenerator(), sample_png, "noir", custom_prompt="looking wistful")
    assert result.data == renders["noir"]


def test_rotated_photo_is_turned_upright_and_bounded() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned a quarter clockwise
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 500), (120, 80, 60)).save(buffer, format="JPEG", exif=exif)
    assert decode_source(buffer.getvalue(), 768).shape == (768, 384, 3)


def test_transparent_source_is_flattened_onto_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (1000, 800), (200, 0, 0, 0)).save(buffer, format="PNG")
    assert decode_source(buffer.getvalue(), 768).tolist() == np.full((614, 768, 3), 255).tolist()


def test_styles_of_one_photo_decode_it_once(
    sample_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []

    def counting(data: bytes, max_side: int) -> np.ndarray:
        decoded.append(len(data))
        return decode_source(data, max_side)

    monkeypatch.setattr(local, "decode_source", counting)
    generator = LocalGenerator()
    for style_key in ("noir", "poster", "pixel_art"):
        _render(generator, bytes(sample_png), style_key)  # equal bytes, another object
    assert decoded == [len(sample_png)]


@pytest.mark.anyio
async def test_generate_renders_at_most_max_parallel_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = peak = 0
    lock = threading.Lock()

    def render(self: LocalGenerator, request: GenerationRequest) -> GeneratedImage:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return GeneratedImage(data=NOOP_PNG)

    monkeypatch.setattr(LocalGenerator, "render", render)
    generator = LocalGenerator(max_parallel=2)
    request = GenerationRequest(source=NOOP_PNG, style_key="noir", prompt="x")
    await asyncio.gather(*(generator.generate(request) for _ in range(8)))
    await generator.aclose()
    assert peak == 2


# -- factory, noop and sample -----------------------------------------------------------


def test_get_generator_builds_each_kind_by_name() -> None:
    assert isinstance(get_generator("local"), LocalGenerator)
    assert isinstance(get_generator("noop"), NoopGenerator)
    assert isinstance(get_generator("http", api_token="t"), HttpGenerator)
    assert get_generator("local", max_side=256).max_side == 256  # type: ignore[attr-defined]


def test_get_generator_rejects_an_unknown_name() -> None:
    with pytest.raises(ConfigurationError):
        get_generator("dall-e")


@pytest.mark.anyio
async def test_noop_returns_the_fixed_tiny_png() -> None:
    result = await NoopGenerator().generate(GenerationRequest(b"", "noir", "x"))
    assert result == GeneratedImage(data=NOOP_PNG, content_type="image/png", extension="png")
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (8, 8)


def test_sample_portrait_is_a_deterministic_textured_png(sample_png: bytes) -> None:
    with Image.open(io.BytesIO(sample_png)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (WIDTH, HEIGHT))
        pixels = np.asarray(image, np.float32)
    assert np.array_equal(pixels, np.asarray(sample_portrait(), np.float32))
    assert pixels.std() > 40  # real contrast for the filters to work with


# -- http generator ---------------------------------------------------------------------

BASE = "https://api.test"
CDN_URL = "https://cdn.test/p1/output.png"
MODEL_URL = f"{BASE}/v1/models/acme/stylizer/predictions"
POLL_URL = f"{BASE}/v1/predictions/p1"
CANCEL_URL = f"{BASE}/v1/predictions/p1/cancel"


def _prediction(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "p1", "status": status, "urls": {"get": POLL_URL, "cancel": CANCEL_URL}, **fields}


def _request_for(model: str | None = "acme/stylizer") -> GenerationRequest:
    return GenerationRequest(
        source=NOOP_PNG, style_key="oil_painting", prompt="an oil painting portrait", model=model
    )


class FakeTime:
    """An injectable sleep that records its waits and moves a fake clock on by them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_http(fake_time: FakeTime) -> Callable[..., HttpGenerator]:
    def make(**settings: Any) -> HttpGenerator:
        options: dict[str, Any] = {
            "api_token": "secret-token",
            "base_url": BASE,
            "poll_interval": 0.5,
            "sleep": fake_time.sleep,
            "clock": fake_time.clock,
            **settings,
        }
        return HttpGenerator(**options)

    return make


@pytest.mark.anyio
async def test_http_creates_polls_and_downloads(
    make_http: Callable[..., HttpGenerator], fake_time: FakeTime
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(MODEL_URL).respond(201, json=_prediction("starting"))
        poll = api.get(POLL_URL).mock(
            side_effect=[
                httpx.Response(200, json=_prediction("processing")),
                httpx.Response(200, json=_prediction("succeeded", output=[CDN_URL])),
            ]
        )
        download = api.get(CDN_URL).respond(
            200, content=NOOP_PNG, headers={"Content-Type": "image/png"}
        )
        async with make_http() as generator:
            result = await generator.generate(_request_for())

    assert result == GeneratedImage(data=NOOP_PNG, content_type="image/png", extension="png")
    body = json.loads(create.calls.last.request.content)
    assert body == {
        "input": {
            "image": "data:image/png;base64," + base64.b64encode(NOOP_PNG).decode(),
            "prompt": "an oil painting portrait",
        }
    }
    assert create.calls.last.request.headers["Authorization"] == "Bearer secret-token"
    assert poll.call_count == 2
    assert poll.calls.last.request.headers["Authorization"] == "Bearer secret-token"
    assert "Authorization" not in download.calls.last.request.headers  # never to the CDN
    assert fake_time.sleeps == [0.5, 0.5]


@pytest.mark.anyio
async def test_http_versioned_model_posts_to_predictions_with_the_version(
    make_http: Callable[..., HttpGenerator],
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(f"{BASE}/v1/predictions").respond(
            201, json=_prediction("succeeded", output=CDN_URL)
        )
        api.get(CDN_URL).respond(200, content=NOOP_PNG)
        async with make_http() as generator:
            await generator.generate(_request_for("acme/stylizer:5c7d5dc6dd8b"))

    assert json.loads(create.calls.last.request.content)["version"] == "5c7d5dc6dd8b"


@pytest.mark.anyio
async def test_http_sends_prefer_wait_when_configured(
    make_http: Callable[..., HttpGenerator],
    fake_time: FakeTime,
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(MODEL_URL).respond(201, json=_prediction("succeeded", output=CDN_URL))
        api.get(CDN_URL).respond(200, content=NOOP_PNG)
        async with make_http(prefer_wait=10) as generator:
            await generator.generate(_request_for())

    assert create.calls.last.request.headers["Prefer"] == "wait=10"
    assert fake_time.sleeps == []  # answered finished: no polling


@pytest.mark.anyio
async def test_http_429_waits_for_retry_after_then_succeeds(
    make_http: Callable[..., HttpGenerator],
    fake_time: FakeTime,
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(MODEL_URL).mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "slow down"}),
                httpx.Response(201, json=_prediction("succeeded", output=CDN_URL)),
            ]
        )
        api.get(CDN_URL).respond(200, content=NOOP_PNG)
        async with make_http() as generator:
            result = await generator.generate(_request_for())

    assert result.data == NOOP_PNG
    assert create.call_count == 2
    assert fake_time.sleeps == [1.0]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 11, 25, 12, 0, 7, tzinfo=UTC), usegmt=True)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(later, now) == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # in the past
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


@pytest.mark.anyio
async def test_http_repeated_5xx_is_retryable_after_bounded_backoff(
    make_http: Callable[..., HttpGenerator],
    fake_time: FakeTime,
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(MODEL_URL).respond(503, json={"detail": "overloaded"})
        async with make_http(max_retries=2, backoff=1.0) as generator:
            with pytest.raises(RetryableGenerationError) as caught:
                await generator.generate(_request_for())

    assert create.call_count == 3
    assert fake_time.sleeps == [1.0, 2.0]
    assert caught.value.details["status"] == 503


@pytest.mark.anyio
async def test_http_retry_after_beyond_max_backoff_is_retryable_at_once(
    make_http: Callable[..., HttpGenerator],
    fake_time: FakeTime,
) -> None:
    with respx.mock(assert_all_called=True) as api:
        api.post(MODEL_URL).respond(429, headers={"Retry-After": "600"})
        async with make_http(max_backoff=30.0) as generator:
            with pytest.raises(RetryableGenerationError) as caught:
                await generator.generate(_request_for())

    assert fake_time.sleeps == []
    assert caught.value.details["retry_after"] == 600.0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("read timed out"), httpx.ConnectError("connection refused")],
    ids=["timeout", "connect-error"],
)
async def test_http_timeout_or_connection_error_is_retryable(
    make_http: Callable[..., HttpGenerator],
    failure: Exception,
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(MODEL_URL).mock(side_effect=failure)
        async with make_http() as generator:
            with pytest.raises(RetryableGenerationError):
                await generator.generate(_request_for())

    assert create.call_count == 1  # not retried in place: the create may have gone through


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_http_client_error_is_permanent(
    make_http: Callable[..., HttpGenerator], status: int
) -> None:
    with respx.mock(assert_all_called=True) as api:
        create = api.post(MODEL_URL).respond(status, json={"detail": "Invalid input: image"})
        async with make_http() as generator:
            with pytest.raises(PermanentGenerationError) as caught:
                await generator.generate(_request_for())

    assert create.call_count == 1
    assert caught.value.details["status"] == status
    assert "Invalid input: image" in caught.value.message


@pytest.mark.anyio
async def test_http_failed_prediction_is_permanent(
    make_http: Callable[..., HttpGenerator],
) -> None:
    with respx.mock(assert_all_called=True) as api:
        api.post(MODEL_URL).respond(201, json=_prediction("starting"))
        api.get(POLL_URL).respond(200, json=_prediction("failed", error="NSFW content detected"))
        async with make_http() as generator:
            with pytest.raises(PermanentGenerationError) as caught:
                await generator.generate(_request_for())

    assert caught.value.details["error"] == "NSFW content detected"


@pytest.mark.anyio
async def test_http_prediction_failed_by_infrastructure_is_retryable(
    make_http: Callable[..., HttpGenerator],
) -> None:
    with respx.mock(assert_all_called=True) as api:
        api.post(MODEL_URL).respond(
            201, json=_prediction("failed", error="Prediction timed out waiting for a GPU")
        )
        async with make_http() as generator:
            with pytest.raises(RetryableGenerationError):
                await generator.generate(_request_for())


@pytest.mark.anyio
async def test_http_canceled_prediction_is_permanent(
    make_http: Callable[..., HttpGenerator],
) -> None:
    with respx.mock(assert_all_called=True) as api:
        api.post(MODEL_URL).respond(201, json=_prediction("canceled"))
        async with make_http() as generator:
            with pytest.raises(PermanentGenerationError):
                await generator.generate(_request_for())


@pytest.mark.anyio
async def test_http_prediction_running_past_max_wait_is_cancelled_and_retryable(
    make_http: Callable[..., HttpGenerator],
    fake_time: FakeTime,
) -> None:
    with respx.mock(assert_all_called=True) as api:
        api.post(MODEL_URL).respond(201, json=_prediction("starting"))
        api.get(POLL_URL).respond(200, json=_prediction("processing"))
        cancel = api.post(CANCEL_URL).respond(200, json=_prediction("canceled"))
        async with make_http(poll_interval=2.0, max_wait=5.0) as generator:
            with pytest.raises(RetryableGenerationError):
                await generator.generate(_request_for())

    assert fake_time.sleeps == [2.0, 2.0, 1.0]
    assert cancel.call_count == 1


@pytest.mark.anyio
async def test_http_output_that_is_not_an_image_is_permanent(
    make_http: Callable[..., HttpGenerator],
) -> None:
    with respx.mock(assert_all_called=True) as api:
        api.post(MODEL_URL).respond(201, json=_prediction("succeeded", output=[CDN_URL]))
        api.get(CDN_URL).respond(
            200, text="<html>expired</html>", headers={"Content-Type": "text/html"}
        )
        async with make_http() as generator:
            with pytest.raises(PermanentGenerationError):
                await generator.generate(_request_for())


@pytest.mark.anyio
async def test_http_style_without_a_model_is_permanent(
    make_http: Callable[..., HttpGenerator],
) -> None:
    async with make_http() as generator:
        with pytest.raises(PermanentGenerationError):
            await generator.generate(_request_for(model=None))


def test_http_requires_an_api_token() -> None:
    with pytest.raises(ConfigurationError):
        HttpGenerator(api_token="")
