"""The local generator: real stylisation on this machine with OpenCV, NumPy and Pillow.

No model and no network: each style key maps to an effect in
:mod:`portraitkit.generators.styles`. The source is decoded, scaled so its longest side is
at most ``max_side``, turned upright (EXIF), stylised and encoded as PNG; the scaled
source is kept for the batch's other styles. The output depends only on the request:
noise is drawn from a generator seeded with a hash of the source and the style, so the
same request always yields the same bytes.

Memory: a render's working arrays (up to some 80 MB for a 768-pixel portrait) come from the
C allocator, and glibc keeps what a thread frees in that thread's own arena for reuse. So
renders run on a few threads of the generator's own (one per core at most), never on the
event loop's shared pool where they would leave a render's worth of memory behind in
every thread they visit, and each render hands its freed pages back to the system
(``malloc_trim``). ``benchmarks/worker_memory.py`` measures the result.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import io
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from portraitkit.errors import PermanentGenerationError
from portraitkit.generators.base import GeneratedImage, GenerationRequest
from portraitkit.generators.styles import EFFECTS, Effect

DEFAULT_MAX_SIDE = 768
MIN_SIDE = 16  # below this there is nothing to stylise
PNG_COMPRESSION = 3  # zlib level: fast to write, still compact
SCALED_SOURCES_KEPT = 8  # about 1.3 MB each at the default max_side

# EXIF orientation -> the transpose that turns the stored pixels upright (as Pillow's
# ImageOps.exif_transpose does, but applied to the scaled image).
UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Colour words a custom prompt may use to tint the result (the first one found wins).
PROMPT_TINTS: dict[str, tuple[int, int, int]] = {
    "red": (220, 60, 50),
    "orange": (240, 140, 40),
    "gold": (230, 180, 60),
    "golden": (230, 180, 60),
    "yellow": (240, 220, 70),
    "green": (70, 180, 90),
    "teal": (40, 170, 170),
    "blue": (60, 110, 220),
    "purple": (150, 80, 200),
    "violet": (150, 80, 200),
    "pink": (240, 120, 170),
    "warm": (240, 170, 110),
    "cool": (110, 160, 230),
}
TINT_STRENGTH = 0.22


class LocalGenerator:
    """Stylises with the effect registered under the request's style key."""

    def __init__(
        self, *, max_side: int = DEFAULT_MAX_SIDE, max_parallel: int | None = None
    ) -> None:
        if max_side < MIN_SIDE:
            raise ValueError(f"max_side must be at least {MIN_SIDE}")
        self.max_side = max_side
        self._sources = _ScaledSources(max_side)
        # Rendering is CPU-bound: more renders at once than cores only adds their working
        # arrays to the worker's memory, never speed. The pool is the bound (requests wait
        # in its queue) and, with few threads, few allocator arenas hold render memory.
        self._threads = ThreadPoolExecutor(
            max_workers=max_parallel or os.cpu_count() or 1,
            thread_name_prefix="portraitkit-render",
        )

    @property
    def style_keys(self) -> frozenset[str]:
        return frozenset(EFFECTS)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        # Checked before the thread hop so a bad key fails without touching the pixels.
        _effect_for(request.style_key)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._render_and_release, request)

    async def aclose(self) -> None:
        """Let the render threads end once their current render is done."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _render_and_release(self, request: GenerationRequest) -> GeneratedImage:
        try:
            return self.render(request)
        finally:
            release_free_memory()

    def render(self, request: GenerationRequest) -> GeneratedImage:
        """The blocking work behind :meth:`generate`: decode, stylise, tint, encode."""
        effect = _effect_for(request.style_key)
        image = self._sources.get(request.source)
        styled = effect(image, np.random.default_rng(seed_for(request)))
        tint = prompt_tint(request.custom_prompt)
        if tint is not None:
            styled = apply_tint(styled, tint)
        return GeneratedImage(data=encode_png(styled), content_type="image/png", extension="png")


class _ScaledSources:
    """A batch's styles share its photo: decode and scale it once, keep the last few.

    Keyed by a digest of the bytes, so equal photos match whoever read them. The arrays
    are read-only: every render gets the same pixels.
    """

    def __init__(self, max_side: int, size: int = SCALED_SOURCES_KEPT) -> None:
        self._max_side = max_side
        self._size = size
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, data: bytes) -> np.ndarray:
        key = hashlib.blake2b(data, digest_size=16).digest()
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
                return image
        # Decoded outside the lock: renders of different photos decode side by side.
        image = decode_source(data, self._max_side)
        image.setflags(write=False)
        with self._lock:
            self._items[key] = image
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return image


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Give the pages the allocator holds free back to the system.

    glibc returns a freed block to the system only when it sits at the top of its heap;
    the rest of a render's arrays stay resident, scattered between live blocks, until
    reused. Trimming after each render keeps a worker at its live memory, for about a
    tenth more CPU per render (the pages are faulted in again by the next one).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _effect_for(style_key: str) -> Effect:
    try:
        return EFFECTS[style_key]
    except KeyError:
        raise PermanentGenerationError(
            f"The local generator has no style {style_key!r}.",
            details={"style_key": style_key, "known": sorted(EFFECTS)},
        ) from None


def bounded_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so the longest side is ``max_side``; never up."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_source(data: bytes, max_side: int) -> np.ndarray:
    """The source as an upright RGB ``uint8`` array at most ``max_side`` on its longest side.

    It is scaled down as soon as it is decoded, and turned upright and flattened onto white
    after that, so a large photo is held at full size once (while it decodes), not once
    per step. Anything Pillow cannot decode is a :class:`PermanentGenerationError`: the
    same bytes will not decode on a second try.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            opened.load()
            _check_min_side(opened)
            orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
            image = _resizable(opened)
            # The longest side is the same either way up, so the size is too.
            size = bounded_size(image.width, image.height, max_side)
            if size != image.size:
                image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        raise PermanentGenerationError(
            "The source image cannot be decoded.", details={"reason": str(exc)}
        ) from exc
    if orientation in UPRIGHT:
        image = image.transpose(UPRIGHT[orientation])
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image).convert("RGB")
    return np.asarray(image)


def _check_min_side(image: Image.Image) -> None:
    if min(image.size) < MIN_SIDE:
        raise PermanentGenerationError(
            f"The source image is {image.width}x{image.height}; at least {MIN_SIDE} pixels "
            "on each side are needed.",
            details={"width": image.width, "height": image.height, "min_side": MIN_SIDE},
        )


def _resizable(image: Image.Image) -> Image.Image:
    """The image in a mode Pillow resamples with its colours intact: RGB, or RGBA where it
    may be transparent (Pillow resamples a palette image by nearest neighbour)."""
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode in ("LA", "P", "PA"):
        return image.convert("RGBA")
    return image.convert("RGB")


def seed_for(request: GenerationRequest) -> int:
    """A seed from the source bytes and the style: same request, same noise."""
    digest = hashlib.sha256(request.style_key.encode() + b"\0" + request.source).digest()
    return int.from_bytes(digest[:8], "big")


def prompt_tint(custom_prompt: str | None) -> tuple[int, int, int] | None:
    """The tint named by the first colour word in the custom prompt, if any."""
    if not custom_prompt:
        return None
    for word in re.findall(r"[a-z]+", custom_prompt.lower()):
        if word in PROMPT_TINTS:
            return PROMPT_TINTS[word]
    return None


def apply_tint(image: np.ndarray, tint: tuple[int, int, int]) -> np.ndarray:
    """Blend towards the tint at each pixel's own brightness, so the style survives."""
    pixels = image.astype(np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    tint_rgb = np.array(tint, np.float32)
    tint_grey = 0.299 * tint_rgb[0] + 0.587 * tint_rgb[1] + 0.114 * tint_rgb[2]
    coloured = grey * tint_rgb / tint_grey
    blended = pixels + (coloured - pixels) * TINT_STRENGTH
    tinted: np.ndarray = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return tinted


def encode_png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(
        ".png",
        np.ascontiguousarray(image[..., ::-1]),
        [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION],
    )
    if not ok:
        raise PermanentGenerationError("The result could not be encoded as PNG.")
    return encoded.tobytes()
