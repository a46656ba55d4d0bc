"""Small image tools the style effects share.

Conventions: effects take and return RGB ``uint8`` arrays of shape (h, w, 3); inside they
work in ``float32`` 0..1 ("float images"). Randomness always comes from the ``rng`` the
caller seeds from the input, never from a global generator, so output is reproducible.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

# OpenCV's stubs type every result as "an array of some number", so the aliases say what an
# array holds in words rather than in dtypes that would need a cast after each call.
Image = NDArray[Any]  # RGB uint8, (h, w, 3)
Float = NDArray[Any]  # float32 0..1, (h, w) or (h, w, c)
RGB = tuple[int, int, int]


def to_float(image: Image) -> Float:
    return image.astype(np.float32) / 255.0


def to_uint8(image: Float) -> Image:
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def luminance(image: Image) -> Float:
    """Perceived brightness 0..1, (h, w)."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def colour(rgb: RGB) -> Float:
    return np.array(rgb, np.float32) / 255.0


def blur(image: Float, sigma: float) -> Float:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def smoothstep(edge0: float, edge1: float, x: Float) -> Float:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def mix(a: Float, b: Float, amount: Float | float) -> Float:
    """Linear blend: ``a`` where amount is 0, ``b`` where it is 1; 2-D amounts broadcast."""
    if isinstance(amount, np.ndarray) and amount.ndim == 2 and a.ndim == 3:
        amount = amount[..., None]
    return a + (b - a) * amount


def ramp(tone: Float, stops: list[tuple[float, RGB]]) -> Float:
    """Map a 0..1 tone to colours by interpolating between ``(tone, colour)`` stops."""
    positions = [p for p, _ in stops]
    channels = [np.interp(tone, positions, [c[i] / 255.0 for _, c in stops]) for i in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def shrink(image: Image, factor: int) -> Image:
    """Downscale by an integer factor (area averaging), for costly filters."""
    h, w = image.shape[:2]
    size = (max(1, w // factor), max(1, h // factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def resize_to(image: NDArray[Any], shape: tuple[int, ...], nearest: bool = False) -> NDArray[Any]:
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)


def saturate(image: Image, saturation: float, value: float = 1.0) -> Image:
    """Scale saturation and brightness in HSV."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] *= saturation
    hsv[..., 2] *= value
    hsv = np.clip(hsv, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float = 0.0) -> Float:
    """Zero-mean noise with unit spread; ``sigma`` > 0 makes it blotchy at that scale.

    Coarse noise is made small and scaled up: the same look as blurring full-size noise,
    at a fraction of the cost of a wide Gaussian.
    """
    factor = max(1, int(sigma / 2.0))
    h, w = shape
    small = (h // factor + 2, w // factor + 2) if factor > 1 else shape
    field: Float = rng.standard_normal(small, dtype=np.float32)
    if sigma > 0:
        field = blur(field, sigma / factor)
    if factor > 1:
        size = (small[1] * factor, small[0] * factor)
        field = cv2.resize(field, size, interpolation=cv2.INTER_LINEAR)[:h, :w]
    if sigma > 0:
        field = field / (float(field.std()) + 1e-6)
    return np.ascontiguousarray(field, dtype=np.float32)


def paper(
    shape: tuple[int, int], rng: np.random.Generator, tint: RGB, roughness: float = 0.04
) -> Float:
    """A paper ground: the tint with fine tooth and faint blotches."""
    grain = 0.6 * noise(shape, rng, 0.7) + 0.4 * noise(shape, rng, 12.0)
    return colour(tint) * (1.0 + roughness * grain)[..., None]


def vignette(shape: tuple[int, int], strength: float, roundness: float = 2.0) -> Float:
    """1 in the middle falling to ``1 - strength`` in the corners, (h, w)."""
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    distance = (np.abs(x) ** roundness + np.abs(y) ** roundness) / 2.0
    return 1.0 - strength * smoothstep(0.15, 1.0, distance)


def dodge_sketch(grey: Float, sigma: float) -> Float:
    """The colour-dodge pencil trick: white where flat, dark lines where tone changes."""
    inverted_blur = blur(1.0 - grey, sigma)
    return np.clip(grey / np.maximum(1.0 - inverted_blur, 1e-3), 0.0, 1.0)


def hatching(
    shape: tuple[int, int],
    rng: np.random.Generator,
    spacing: float,
    angle_degrees: float,
    width: float = 0.18,
) -> Float:
    """Parallel, slightly wavering lines (1 on a line, 0 between), (h, w)."""
    h, w = shape
    theta = np.deg2rad(angle_degrees)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xs * np.cos(theta) + ys * np.sin(theta)) / spacing
    phase += 0.25 * noise(shape, rng, 18.0)
    distance = np.abs(phase - np.round(phase))
    return 1.0 - smoothstep(width * 0.5, width, distance)


def halftone(darkness: Float, spacing: float, angle_degrees: float) -> Float:
    """Round halftone dots on a rotated grid whose area follows ``darkness``, (h, w)."""
    h, w = darkness.shape
    theta = np.deg2rad(angle_degrees)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs * np.cos(theta) + ys * np.sin(theta)) / spacing
    v = (-xs * np.sin(theta) + ys * np.cos(theta)) / spacing
    distance = np.hypot(u - np.round(u), v - np.round(v))  # 0 at a dot centre, <= 0.71
    radius = np.sqrt(np.clip(darkness, 0.0, 1.0) / np.pi) * 1.0
    edge = 0.6 / spacing  # about one pixel of anti-aliasing
    return 1.0 - smoothstep(-edge, edge, distance - radius)


def edges(grey: Float, low: float, high: float, thickness: int = 1) -> Float:
    """Canny edges (1 on an edge), optionally thickened, (h, w)."""
    found: Float = cv2.Canny(to_uint8(grey), low * 255, high * 255).astype(np.float32) / 255
    if thickness > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness))
        found = cv2.dilate(found, kernel)
    return found


def quantile_bands(tone: Float, quantiles: list[float]) -> NDArray[np.intp]:
    """Band index per pixel, with cut-offs at tone quantiles so every band gets used."""
    cuts = np.quantile(tone, quantiles)
    return np.digitize(tone, cuts)
