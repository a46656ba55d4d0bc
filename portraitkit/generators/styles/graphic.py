"""Graphic styles: pop-art screen prints, comic halftone and a few-tone poster."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image as PILImage

from portraitkit.generators.styles.tools import (
    RGB,
    Image,
    blur,
    colour,
    halftone,
    luminance,
    mix,
    paper,
    quantile_bands,
    resize_to,
    saturate,
    shrink,
    smoothstep,
    to_float,
    to_uint8,
)

# Four screen-print colourways, darkest ink first: (shadow, mid, light, highlight).
POP_PALETTES: tuple[tuple[RGB, RGB, RGB, RGB], ...] = (
    ((30, 20, 90), (240, 40, 140), (255, 150, 200), (255, 236, 60)),
    ((10, 70, 60), (255, 110, 20), (255, 200, 60), (120, 230, 255)),
    ((80, 10, 40), (40, 120, 255), (150, 220, 120), (255, 245, 200)),
    ((20, 20, 20), (200, 30, 40), (255, 170, 60), (130, 255, 200)),
)

# The classic campaign-poster scheme: navy, red, pale blue, cream.
POSTER_PALETTE: tuple[RGB, ...] = ((0, 48, 80), (215, 26, 33), (112, 150, 160), (252, 228, 168))


def pop_art(image: Image, rng: np.random.Generator) -> Image:
    """A 2x2 grid of the portrait screen-printed in four loud colourways, with black ink."""
    h, w = image.shape[:2]
    tile_h, tile_w = h // 2, w // 2
    tile = cv2.resize(image, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
    tone = luminance(cv2.bilateralFilter(tile, 7, 40, 5))
    tone = blur(tone, max(tile.shape) / 400)
    bands = quantile_bands(tone, [0.25, 0.55, 0.85])
    ink = _ink_lines(tile, thickness=2)
    out = np.zeros((h, w, 3), np.uint8)
    gutter = max(2, w // 150)
    for index, palette in enumerate(POP_PALETTES):
        printed = np.array(palette, np.uint8)[bands]
        printed[ink > 0.5] = 0
        top, left = (index // 2) * tile_h, (index % 2) * tile_w
        out[top : top + tile_h, left : left + tile_w] = printed
    out[tile_h - gutter // 2 : tile_h + gutter - gutter // 2, :] = 0
    out[:, tile_w - gutter // 2 : tile_w + gutter - gutter // 2] = 0
    return out


def _ink_lines(image: Image, thickness: int) -> np.ndarray:
    """Black outlines where the tone changes, as a screen printer's key plate."""
    grey = cv2.cvtColor(cv2.medianBlur(image, 5), cv2.COLOR_RGB2GRAY)
    lines = cv2.adaptiveThreshold(
        grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, blockSize=9, C=5
    )
    lines = cv2.morphologyEx(lines, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    if thickness > 1:
        lines = cv2.dilate(lines, np.ones((thickness, thickness), np.uint8))
    return lines.astype(np.float32) / 255.0


def comic_halftone(image: Image, rng: np.random.Generator) -> Image:
    """Flat printed colours, halftone dots for the shading, solid black shadows and inked
    outlines, on slightly yellowed newsprint."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    small = saturate(shrink(image, 2), 1.5, 1.1)
    flat_small = cv2.bilateralFilter(cv2.bilateralFilter(small, 9, 60, 7), 9, 60, 7)
    flat = resize_to(_limit_palette(flat_small, 10), shape, nearest=False)
    tone = blur(luminance(image), 1.5 * scale)
    base = np.clip(to_float(flat) * 1.25 + 0.08, 0.0, 1.0)  # printed lighter; dots add shade
    dots = halftone(smoothstep(0.95, 0.2, tone) * 0.85, max(5.0, 7.0 * scale), 45.0)
    ink = colour((30, 25, 60))
    printed = mix(base, base * ink * 2.2, dots * 0.7)
    shadows = smoothstep(0.2, 0.14, tone)
    outlines = _ink_lines(image, thickness=max(1, round(2 * scale)))
    black = np.maximum(shadows, outlines)
    newsprint = paper(shape, rng, (250, 244, 225), roughness=0.02)
    printed = printed * newsprint / newsprint.max()
    return to_uint8(mix(printed, np.full_like(printed, 0.05), black))


def _limit_palette(image: Image, colours: int) -> Image:
    """Reduce to ``colours`` flat inks (median cut, no dithering: deterministic)."""
    quantised = PILImage.fromarray(image).quantize(
        colours, method=PILImage.Quantize.MEDIANCUT, dither=PILImage.Dither.NONE
    )
    return np.asarray(quantised.convert("RGB"))


def poster(image: Image, rng: np.random.Generator) -> Image:
    """Four flat tones from the campaign-poster palette, cut at smooth contours."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    small = shrink(image, 2)
    smooth = cv2.bilateralFilter(cv2.medianBlur(small, 5), 9, 50, 7)
    tone = resize_to(blur(luminance(smooth), 1.5 * scale), shape)
    bands = quantile_bands(tone, [0.22, 0.5, 0.78]).astype(np.uint8)
    clean = cv2.medianBlur(bands, 5)  # no specks: only clean shapes
    out = np.array(POSTER_PALETTE, np.uint8)[clean]
    grain = paper(shape, rng, (255, 255, 255), roughness=0.025)
    return to_uint8(to_float(out) * grain)
