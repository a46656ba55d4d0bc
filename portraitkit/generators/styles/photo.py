"""Photographic styles: vintage sepia print, film noir and cyanotype."""

from __future__ import annotations

import cv2
import numpy as np

from portraitkit.generators.styles.tools import (
    Float,
    Image,
    blur,
    luminance,
    mix,
    noise,
    paper,
    ramp,
    smoothstep,
    to_uint8,
    vignette,
)


def vintage_photo(image: Image, rng: np.random.Generator) -> Image:
    """A faded sepia print: soft focus, lifted blacks, film grain, dust, a dark vignette and
    a yellowed white border."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    tone = blur(luminance(image), 1.2 * scale)
    tone = 0.12 + 0.78 * smoothstep(-0.05, 1.05, tone)  # faded: no true black or white
    tone = tone + 0.06 * noise(shape, rng, 0.6 * scale)  # film grain
    tone *= vignette(shape, 0.55)
    print_ = ramp(
        np.clip(tone, 0.0, 1.0),
        [
            (0.0, (40, 24, 12)),
            (0.45, (138, 98, 62)),
            (0.8, (214, 186, 140)),
            (1.0, (246, 232, 200)),
        ],
    )
    print_ *= (1.0 + 0.06 * noise(shape, rng, 30.0 * scale))[..., None]  # uneven fading
    print_ = _dust_and_scratches(print_, rng, scale)
    border = _border(shape, round(18 * scale))
    card = paper(shape, rng, (236, 226, 200), roughness=0.03)
    return to_uint8(mix(print_, card, border))


def _dust_and_scratches(print_: Float, rng: np.random.Generator, scale: float) -> Float:
    h, w = print_.shape[:2]
    marks = np.zeros((h, w), np.uint8)
    for _ in range(60):  # dust specks
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.circle(marks, (x, y), int(rng.integers(1, 3)), 255, -1, cv2.LINE_AA)
    for _ in range(4):  # long faint scratches
        x = int(rng.integers(0, w))
        cv2.line(marks, (x, 0), (x + int(rng.integers(-40, 40)), h), 70, 1, cv2.LINE_AA)
    marks_f = blur(marks.astype(np.float32) / 255.0, 0.5 * scale)
    return mix(print_, np.full_like(print_, 0.93), marks_f * 0.7)


def _border(shape: tuple[int, int], width: int) -> Float:
    """1 on a print's white border, 0 on the picture, with slightly rounded corners."""
    h, w = shape
    inside = np.zeros((h, w), np.uint8)
    radius = max(2, width // 2)
    cv2.rectangle(inside, (width + radius, width), (w - width - radius, h - width), 255, -1)
    cv2.rectangle(inside, (width, width + radius), (w - width, h - width - radius), 255, -1)
    for cx, cy in (
        (width + radius, width + radius),
        (w - width - radius, width + radius),
        (width + radius, h - width - radius),
        (w - width - radius, h - width - radius),
    ):
        cv2.circle(inside, (cx, cy), radius, 255, -1, cv2.LINE_AA)
    return 1.0 - inside.astype(np.float32) / 255.0


def noir(image: Image, rng: np.random.Generator) -> Image:
    """Hard black-and-white: crushed shadows, a hot key light, venetian-blind shadows across
    the frame, grain and a heavy vignette."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    grey = luminance(image)
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(6, 6))
    local = clahe.apply((grey * 255).astype(np.uint8)).astype(np.float32) / 255.0
    tone = smoothstep(0.28, 0.78, 0.5 * grey + 0.5 * local)  # steep curve: hard shadows
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    slats = np.sin((xs * 0.45 + ys) / (26.0 * scale) * np.pi)  # blinds, slanting down left
    blinds = 1.0 - 0.6 * smoothstep(0.1, 0.4, slats)
    key = np.exp(-(((xs - 0.42 * w) / (0.5 * w)) ** 2 + ((ys - 0.42 * h) / (0.55 * h)) ** 2))
    tone = tone * (0.35 + 0.65 * key) * mix(blinds, np.ones_like(blinds), 0.25 * key)
    tone = tone * vignette(shape, 0.7, roundness=2.5)
    tone = np.clip(tone + 0.045 * noise(shape, rng, 0.7 * scale), 0.0, 1.0) ** 1.15
    return to_uint8(np.repeat(tone[..., None], 3, axis=-1))


def cyanotype(image: Image, rng: np.random.Generator) -> Image:
    """A sun print: Prussian blue shadows to paper white, on brushed-on emulsion whose edge
    shows at the borders of the sheet."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    tone = blur(luminance(image), 1.0 * scale)
    tone = smoothstep(0.05, 0.95, tone) ** 0.85
    tone = np.clip(tone + 0.035 * noise(shape, rng, 1.5 * scale), 0.0, 1.0)
    blue = ramp(
        tone,
        [(0.0, (8, 30, 74)), (0.35, (20, 68, 138)), (0.7, (92, 146, 196)), (1.0, (226, 236, 240))],
    )
    sheet = paper(shape, rng, (244, 240, 228), roughness=0.04)
    emulsion = _brushed_edge(shape, rng, scale)
    return to_uint8(mix(sheet, blue * sheet / sheet.max(), emulsion))


def _brushed_edge(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> Float:
    """Where the light-sensitive wash was brushed: ragged, streaky strokes near the edges."""
    h, w = shape
    margin = 30.0 * scale
    ys = np.minimum(np.arange(h), np.arange(h)[::-1]).astype(np.float32)[:, None]
    xs = np.minimum(np.arange(w), np.arange(w)[::-1]).astype(np.float32)[None, :]
    streaks_x = cv2.resize(noise((1, w), rng, 3.0), (w, h)) * 10.0 * scale
    streaks_y = cv2.resize(noise((h, 1), rng, 3.0), (w, h)) * 10.0 * scale
    distance = np.minimum(ys + streaks_x, xs + streaks_y)
    return smoothstep(margin * 0.4, margin, distance + noise(shape, rng, 2.0) * 3.0 * scale)
