"""Drawing styles: pencil sketch, charcoal and ink wash, all monochrome on paper."""

from __future__ import annotations

import cv2
import numpy as np

from portraitkit.generators.styles.tools import (
    Float,
    Image,
    blur,
    colour,
    dodge_sketch,
    hatching,
    luminance,
    mix,
    noise,
    paper,
    smoothstep,
    to_uint8,
)


def pencil_sketch(image: Image, rng: np.random.Generator) -> Image:
    """Graphite lines from a colour dodge, cross-hatching in the shadows, on cream paper."""
    grey = luminance(image)
    shape = grey.shape
    scale = max(shape) / 768
    lines = dodge_sketch(grey, sigma=3.0 * scale) ** 2.2
    tone = blur(grey, 4.0 * scale)
    spacing = max(3.0, 6.0 * scale)
    light_hatch = hatching(shape, rng, spacing, 40.0) * smoothstep(0.68, 0.4, tone)
    dark_hatch = hatching(shape, rng, spacing, -50.0) * smoothstep(0.5, 0.2, tone)
    graphite = 1.0 - (1.0 - lines) * 0.95
    graphite *= 1.0 - 0.35 * light_hatch - 0.45 * dark_hatch
    ground = paper(shape, rng, (246, 241, 230), roughness=0.03)
    pencil = colour((58, 60, 66))
    return to_uint8(mix(pencil[None, None, :] * np.ones_like(ground), ground, graphite))


def charcoal(image: Image, rng: np.random.Generator) -> Image:
    """Heavy smudged darks, bold contours, diagonal stroke streaks and paper grain."""
    grey = luminance(image)
    shape = grey.shape
    scale = max(shape) / 768
    smudge = np.eye(max(3, round(11 * scale)), dtype=np.float32)[::-1]
    smudge /= smudge.sum()  # smeared along one diagonal, as a thumb drags the powder
    tone = cv2.filter2D(blur(grey, 3.0 * scale), -1, smudge)
    tone = smoothstep(0.12, 0.85, tone) ** 1.4  # push towards deep blacks
    contours = dodge_sketch(grey, sigma=5.0 * scale) ** 5.0
    value = np.minimum(tone * 1.1, blur(contours, 0.8 * scale))
    streaks: Float = cv2.filter2D(noise(shape, rng, 0.6 * scale), -1, smudge)
    streaks = streaks / (float(streaks.std()) + 1e-6)
    middle = smoothstep(0.0, 0.35, value) * smoothstep(1.0, 0.6, value)
    value = np.clip(value + 0.07 * streaks * (0.2 + middle), 0.0, 1.0)
    tooth = smoothstep(0.8, 2.5, noise(shape, rng, 0.7 * scale))
    value = np.maximum(value, 0.22 * tooth * (1.0 - value))  # grain the stick skipped
    ground = paper(shape, rng, (236, 231, 220), roughness=0.05)
    stick = colour((20, 18, 18))
    return to_uint8(mix(stick[None, None, :] * np.ones_like(ground), ground, value))


def ink_wash(image: Image, rng: np.random.Generator) -> Image:
    """Sumi-e: a few bleeding ink tones, calligraphic contours, rice paper, a red seal."""
    grey = luminance(image)
    shape = grey.shape
    scale = max(shape) / 768
    smooth = blur(cv2.medianBlur(image, 5), 2.0 * scale)
    ink = 1.0 - luminance(smooth)
    wash = (
        0.18 * smoothstep(0.35, 0.45, ink)
        + 0.3 * smoothstep(0.55, 0.62, ink)
        + 0.47 * smoothstep(0.72, 0.78, ink)
    )
    wet = blur(wash, 3.0 * scale)
    wash = np.clip(wet + 0.6 * np.clip(wash - blur(wash, 8.0 * scale), 0.0, None), 0.0, 1.0)
    wash *= 1.0 + 0.06 * noise(shape, rng, 6.0 * scale)  # pigment pooling
    dry = cv2.filter2D(noise(shape, rng, 0.8 * scale), -1, _vertical_stroke(scale))
    dry = smoothstep(1.2, 2.2, dry / (float(dry.std()) + 1e-6))  # paper the dry brush skipped
    wash *= 1.0 - 0.35 * dry * smoothstep(0.75, 0.95, wash)
    outline = 1.0 - dodge_sketch(blur(grey, 1.0 * scale), sigma=3.5 * scale)
    pressure = smoothstep(-1.0, 0.8, noise(shape, rng, 12.0 * scale))  # the brush lifts
    brush = smoothstep(0.03, 0.16, outline) * (0.5 + 0.5 * pressure)
    density = np.clip(np.maximum(wash, brush), 0.0, 1.0)
    ground = paper(shape, rng, (241, 234, 216), roughness=0.035)
    ink_colour = colour((24, 24, 30))
    out = mix(ground, ink_colour[None, None, :] * np.ones_like(ground), density)
    return to_uint8(_seal(out, scale, rng))


def _vertical_stroke(scale: float) -> np.ndarray:
    length = max(3, round(25 * scale))
    kernel = np.zeros((length, 1), np.float32)
    kernel[:] = 1.0 / length
    return kernel


def _seal(out: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """The artist's red seal in the lower right, worn at the edges."""
    h, w = out.shape[:2]
    size = round(46 * scale)
    top, left = h - size - round(28 * scale), w - size - round(28 * scale)
    stamp = np.ones((size, size), np.float32)
    inner = max(2, size // 7)
    stamp[inner:-inner, inner:-inner] = 0.0
    glyph = np.zeros((size, size), np.uint8)
    for y in (0.35, 0.62):
        cv2.line(
            glyph,
            (size // 4, round(size * y)),
            (3 * size // 4, round(size * y)),
            255,
            max(2, size // 12),
        )
    cv2.line(glyph, (size // 2, size // 4), (size // 2, 3 * size // 4), 255, max(2, size // 12))
    stamp = np.maximum(stamp, glyph.astype(np.float32) / 255.0)
    stamp *= smoothstep(-1.2, 0.2, noise((size, size), rng, 1.0))
    region = out[top : top + size, left : left + size]
    region[:] = mix(
        region, colour((178, 34, 30))[None, None, :] * np.ones_like(region), stamp * 0.9
    )
    return out
