"""The local generator: real stylisation on this machine with OpenCV, NumPy and Pillow.

No model and no network: each style key maps to an effect in
:mod:`portraitkit.generators.styles`. The source is decoded, turned upright (EXIF), scaled
so its longest side is at most ``max_side``, stylised and encoded as PNG. The output
depends only on the request: noise is drawn from a generator seeded with a hash of the
source and the style, so the same request always yields the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from portraitkit.errors import PermanentGenerationError
from portraitkit.generators.base import GeneratedImage, GenerationRequest
from portraitkit.generators.styles import EFFECTS, Effect

DEFAULT_MAX_SIDE = 768
MIN_SIDE = 16  # below this there is nothing to stylise
PNG_COMPRESSION = 3  # zlib level: fast to write, still compact

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
        # Rendering is CPU-bound: more renders at once than cores only adds their working
        # arrays to the worker's memory, never speed.
        self._renders = asyncio.Semaphore(max_parallel or os.cpu_count() or 1)

    @property
    def style_keys(self) -> frozenset[str]:
        return frozenset(EFFECTS)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        # Checked before the thread hop so a bad key fails without touching the pixels.
        _effect_for(request.style_key)
        async with self._renders:
            return await asyncio.to_thread(self.render, request)

    def render(self, request: GenerationRequest) -> GeneratedImage:
        """The blocking work behind :meth:`generate`: decode, stylise, tint, encode."""
        effect = _effect_for(request.style_key)
        image = decode_source(request.source, self.max_side)
        styled = effect(image, np.random.default_rng(seed_for(request)))
        tint = prompt_tint(request.custom_prompt)
        if tint is not None:
            styled = apply_tint(styled, tint)
        return GeneratedImage(data=encode_png(styled), content_type="image/png", extension="png")


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

    Anything Pillow cannot decode is a :class:`PermanentGenerationError`: the same bytes
    will not decode on a second try.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(opened)
            image.load()
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
                flattened = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(flattened, image)
            image = image.convert("RGB")
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
    if min(image.size) < MIN_SIDE:
        raise PermanentGenerationError(
            f"The source image is {image.width}x{image.height}; at least {MIN_SIDE} pixels "
            "on each side are needed.",
            details={"width": image.width, "height": image.height, "min_side": MIN_SIDE},
        )
    size = bounded_size(image.width, image.height, max_side)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(image)


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
