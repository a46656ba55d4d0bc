"""Digital styles: pixel art, neon glow and cartoon cel shading."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image as PILImage

from portraitkit.generators.styles.tools import (
    Image,
    blur,
    colour,
    edges,
    luminance,
    mix,
    resize_to,
    saturate,
    shrink,
    smoothstep,
    to_float,
    to_uint8,
)

PIXEL_ART_SIDE = 80  # sprite pixels along the longest side
PIXEL_ART_COLOURS = 16


def pixel_art(image: Image, rng: np.random.Generator) -> Image:
    """A 16-colour sprite about 80 pixels tall, with dark outlines, scaled up crisply."""
    h, w = image.shape[:2]
    block = max(1, round(max(h, w) / PIXEL_ART_SIDE))
    small_w, small_h = -(-w // block), -(-h // block)
    punchy = saturate(image, 1.35, 1.05)
    small = cv2.resize(punchy, (small_w, small_h), interpolation=cv2.INTER_AREA)
    sprite = np.asarray(
        PILImage.fromarray(small)
        .quantize(
            PIXEL_ART_COLOURS, method=PILImage.Quantize.MEDIANCUT, dither=PILImage.Dither.NONE
        )
        .convert("RGB")
    ).copy()
    grey = cv2.cvtColor(sprite, cv2.COLOR_RGB2GRAY).astype(np.int16)
    darker_neighbour = np.zeros_like(grey, bool)  # outline the lighter side of big steps
    darker_neighbour[:, 1:] |= (grey[:, 1:] - grey[:, :-1]) < -60
    darker_neighbour[1:, :] |= (grey[1:, :] - grey[:-1, :]) < -60
    sprite[darker_neighbour] = (sprite[darker_neighbour] * 0.35).astype(np.uint8)
    big = cv2.resize(sprite, (small_w * block, small_h * block), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(big[:h, :w])


def neon_glow(image: Image, rng: np.random.Generator) -> Image:
    """Contours traced in glowing magenta-to-cyan tubes over a near-black, purple ground."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    grey = blur(luminance(image), 1.8 * scale)
    tubes = edges(grey, 0.04, 0.1, thickness=max(2, round(2 * scale)))
    tubes = blur(tubes, 0.7 * scale)
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    hue = (xs / w * 0.6 + ys / h * 0.4)[..., None]  # magenta top left, cyan bottom right
    tint = mix(colour((255, 40, 200)), colour((40, 230, 255)), hue)
    glow = tubes[..., None] * tint
    halo = (
        1.2 * blur(glow, 3.0 * scale)
        + 0.9 * blur(glow, 9.0 * scale)
        + 0.6 * blur(glow, 22.0 * scale)
    )
    core = tubes[..., None] * 0.25  # tubes burn whiter at their centre
    ground = to_float(image) * 0.16 * colour((120, 80, 200))
    lit = ground + halo * 1.6 + glow * 0.9 + core * smoothstep(0.5, 1.0, tubes)[..., None]
    return to_uint8(1.0 - np.exp(-lit * 0.9))  # soft clip: bright, never harsh


def cartoon(image: Image, rng: np.random.Generator) -> Image:
    """Smoothed colours in a few cel-shaded value bands, with clean dark outlines."""
    shape = image.shape[:2]
    small = shrink(image, 2)
    for _ in range(4):
        small = cv2.bilateralFilter(small, 7, 40, 5)
    smooth = resize_to(small, shape)
    lab = cv2.cvtColor(saturate(smooth, 1.35, 1.05), cv2.COLOR_RGB2LAB).astype(np.float32)
    bands = 5.0
    lightness = blur(lab[..., 0] / 255.0, 1.5 * max(shape) / 768)
    lab[..., 0] = (np.floor(lightness * bands) + 0.5) / bands * 255.0  # cel shading
    cel = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    grey = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 7)
    lines = cv2.adaptiveThreshold(
        grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, blockSize=9, C=4
    )
    lines = cv2.morphologyEx(lines, cv2.MORPH_CLOSE, np.ones((2, 2), np.uint8))
    outline = 1.0 - blur(lines.astype(np.float32) / 255.0, 0.6)
    return to_uint8(mix(to_float(cel), np.full(cel.shape, 0.08, np.float32), outline * 0.9))
