"""Painting styles: watercolour, oil painting and impressionist brushwork."""

from __future__ import annotations

import cv2
import numpy as np

from portraitkit.generators.styles.tools import (
    Float,
    Image,
    blur,
    colour,
    dodge_sketch,
    luminance,
    mix,
    noise,
    paper,
    resize_to,
    saturate,
    shrink,
    smoothstep,
    to_float,
    to_uint8,
    vignette,
)


def watercolor(image: Image, rng: np.random.Generator) -> Image:
    """Flat translucent washes that wobble and bleed, darker wet edges, pigment granulation,
    a faint pencil underdrawing and an unpainted, irregular paper border."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    small = saturate(shrink(image, 2), 1.3, 1.05)
    flat = cv2.edgePreservingFilter(small[..., ::-1], flags=1, sigma_s=40, sigma_r=0.5)
    flat = (flat[..., ::-1] // 24) * 24 + 12  # a few pigment mixes per channel
    washes = to_float(resize_to(np.ascontiguousarray(flat), shape))
    washes = blur(_wobble(washes, rng, amplitude=2.5 * scale), 1.5 * scale)
    pigment = 1.0 - washes
    rims = np.clip(pigment - blur(pigment, 4.0 * scale), 0.0, None).sum(axis=-1)
    density = 0.75 * (1.0 + 0.08 * noise(shape, rng, 1.2 * scale))  # granulation
    density *= 1.0 + 2.5 * rims  # pigment gathers where a wash dried
    density *= 0.85 + 0.3 * smoothstep(-1.5, 1.5, noise(shape, rng, 25.0 * scale))
    density *= smoothstep(0.95, 0.8, blur(luminance(image), 2.0 * scale))  # highlights: paper
    pigment *= density[..., None]
    underdrawing = 1.0 - 0.25 * (1.0 - dodge_sketch(luminance(image), 2.0 * scale) ** 2)
    ground = paper(shape, rng, (250, 247, 240), roughness=0.03)
    painted = ground * np.clip(1.0 - pigment, 0.0, 1.0) * underdrawing[..., None]
    border = _ragged_border(shape, rng, scale)
    return to_uint8(mix(ground, painted, border))


def _wobble(image: Float, rng: np.random.Generator, amplitude: float) -> Float:
    """Displace pixels along a smooth random field: wet edges never run straight."""
    h, w = image.shape[:2]
    dx = noise((h, w), rng, 16.0) * amplitude
    dy = noise((h, w), rng, 16.0) * amplitude
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(
        image,
        xs + dx,
        ys + dy,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def _ragged_border(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> Float:
    """1 inside the painted area, fading to 0 at an irregular margin near the edges."""
    h, w = shape
    margin = 26.0 * scale
    ys = np.minimum(np.arange(h), np.arange(h)[::-1]).astype(np.float32)[:, None]
    xs = np.minimum(np.arange(w), np.arange(w)[::-1]).astype(np.float32)[None, :]
    distance = np.minimum(ys, xs) + noise(shape, rng, 24.0 * scale) * 9.0 * scale
    distance += noise(shape, rng, 3.0 * scale) * 2.0 * scale
    return smoothstep(margin * 0.5, margin, distance)


def oil_painting(image: Image, rng: np.random.Generator) -> Image:
    """Kuwahara-flattened paint, lit impasto ridges, canvas weave and a warm varnish."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    radius = max(2, round(5 * scale))
    paint = _kuwahara(to_float(image), radius)
    paint = _kuwahara(paint, max(2, radius // 2))
    grey = cv2.cvtColor(paint, cv2.COLOR_RGB2GRAY)
    angle = _stroke_angle(grey, 6.0 * scale)
    height = _brush_texture(shape, angle, rng, scale) + 3.0 * blur(grey, 1.0)
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    light = np.clip(1.0 + 0.12 * (-gx - gy) / (np.hypot(gx, gy).mean() * 4 + 1e-6), 0.8, 1.25)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    weave = 1.0 + 0.025 * np.sin(xs * 1.9 / scale) * np.sin(ys * 1.9 / scale)
    varnished = paint * light[..., None] * weave[..., None]
    varnished = varnished**1.1 * colour((255, 238, 205)) * 1.06  # amber glaze, deeper darks
    return to_uint8(varnished * vignette(shape, 0.35)[..., None])


def _kuwahara(image: Float, radius: int) -> Float:
    """Each pixel takes the mean of whichever of its four quadrant windows is flattest:
    regions become flat dabs of paint while edges stay sharp."""
    size = radius + 1
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mean = cv2.blur(image, (size, size), anchor=(0, 0), borderType=cv2.BORDER_REFLECT)
    mean_grey = cv2.blur(grey, (size, size), anchor=(0, 0), borderType=cv2.BORDER_REFLECT)
    mean_sq = cv2.blur(grey * grey, (size, size), anchor=(0, 0), borderType=cv2.BORDER_REFLECT)
    variance = mean_sq - mean_grey * mean_grey
    h, w = grey.shape
    pad = ((radius, radius), (radius, radius))
    variance_p = np.pad(variance, pad, mode="edge")
    mean_p = np.pad(mean, (*pad, (0, 0)), mode="edge")
    best = np.full((h, w), np.inf, np.float32)
    out = np.empty_like(image)
    for dy in (0, radius):  # the window anchored at its top-left starts at (y - dy, x - dx)
        for dx in (0, radius):
            window_var = variance_p[radius - dy : radius - dy + h, radius - dx : radius - dx + w]
            window_mean = mean_p[radius - dy : radius - dy + h, radius - dx : radius - dx + w]
            better = window_var < best
            np.copyto(best, window_var, where=better)
            np.copyto(out, window_mean, where=better[..., None])
    return out


def _stroke_angle(grey: Float, sigma: float) -> Float:
    """Direction along the local contours (radians): strokes follow form, not cross it."""
    smooth = blur(grey, sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = blur(gx * gx, sigma), blur(gy * gy, sigma), blur(gx * gy, sigma)
    angle: Float = 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2
    return angle


def _brush_texture(
    shape: tuple[int, int], angle: Float, rng: np.random.Generator, scale: float
) -> Float:
    """Bristle ridges: noise smeared along the stroke direction, in four direction bins."""
    fine = noise(shape, rng, 0.8 * scale)
    length = max(5, round(15 * scale))
    texture = np.zeros(shape, np.float32)
    bins = np.round(angle / (np.pi / 4)).astype(np.int32) % 4
    for index in range(4):
        kernel = np.zeros((length, length), np.float32)
        theta = index * np.pi / 4
        centre = (length - 1) / 2
        offset = (np.cos(theta) * centre, np.sin(theta) * centre)
        cv2.line(
            kernel,
            (round(centre - offset[0]), round(centre - offset[1])),
            (round(centre + offset[0]), round(centre + offset[1])),
            1.0,
            1,
        )
        smeared = cv2.filter2D(fine, -1, kernel / kernel.sum())
        texture = np.where(bins == index, smeared, texture)
    return texture


def impressionist(image: Image, rng: np.random.Generator) -> Image:
    """Short, separate dabs of brightened colour over a soft underpainting, each dab
    following the form and varied a little in hue and value."""
    shape = image.shape[:2]
    scale = max(shape) / 768
    bright = saturate(image, 1.45, 1.08)
    source = cv2.GaussianBlur(bright, (0, 0), 2.0 * scale)
    canvas = cv2.GaussianBlur(bright, (0, 0), 10.0 * scale)
    angle = _stroke_angle(luminance(image), 5.0 * scale)
    detail = cv2.GaussianBlur(np.abs(cv2.Laplacian(luminance(image), cv2.CV_32F)), (0, 0), 6)
    for step, length, width in ((9, 16, 7), (5, 9, 4)):
        _dab_layer(
            canvas,
            source,
            angle,
            detail,
            rng,
            step * scale,
            length * scale,
            max(2, round(width * scale)),
            fine=step < 9,
        )
    return canvas


def _dab_layer(
    canvas: Image,
    source: Image,
    angle: Float,
    detail: Float,
    rng: np.random.Generator,
    step: float,
    length: float,
    width: int,
    fine: bool,
) -> None:
    """One pass of brush dabs on a jittered grid, in random order, drawn in place."""
    h, w = canvas.shape[:2]
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    xs = (xs + rng.uniform(0, step, xs.shape)).clip(0, w - 1).astype(np.int32).ravel()
    ys = (ys + rng.uniform(0, step, ys.shape)).clip(0, h - 1).astype(np.int32).ravel()
    if fine:  # small strokes only where there is detail to describe
        keep = detail[ys, xs] > np.quantile(detail, 0.55)
        xs, ys = xs[keep], ys[keep]
    order = rng.permutation(len(xs))
    xs, ys = xs[order], ys[order]
    theta = angle[ys, xs] + rng.normal(0.0, 0.25, len(xs))
    half = length * rng.uniform(0.6, 1.0, len(xs)) / 2
    dx, dy = np.cos(theta) * half, np.sin(theta) * half
    colours = source[ys, xs].astype(np.float32) + rng.normal(0.0, 14.0, (len(xs), 3))
    colours = colours.clip(0, 255).astype(np.int32)
    for x, y, ox, oy, c in zip(xs, ys, dx, dy, colours, strict=True):
        cv2.line(
            canvas,
            (int(x - ox), int(y - oy)),
            (int(x + ox), int(y + oy)),
            (int(c[0]), int(c[1]), int(c[2])),
            width,
            cv2.LINE_AA,
        )
