"""A sample portrait we draw ourselves, so demos and tests need no photo and no licence.

It is a stylised head and shoulders with what the filters feed on: soft shading on the
face, hair strands, eyes with highlights, a gradient background and a little grain.
Drawn at twice the size and scaled down, for smooth edges; deterministic to the byte.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 800
_SCALE = 2  # drawing resolution relative to the output
_SEED = 20261125

Color = tuple[int, int, int]
Shape = Callable[..., None]  # draws on an ImageDraw (lambdas with bound defaults)
FloatImage = np.ndarray


@lru_cache(maxsize=1)
def sample_portrait_png() -> bytes:
    """The sample portrait as PNG bytes, 640x800 RGB."""
    buffer = io.BytesIO()
    sample_portrait().save(buffer, format="PNG")
    return buffer.getvalue()


def sample_portrait() -> Image.Image:
    """The sample portrait as a Pillow image, 640x800 RGB."""
    painter = _Painter(WIDTH * _SCALE, HEIGHT * _SCALE)
    painter.background()
    painter.body()
    painter.head()
    painter.face_features()
    painter.grain(np.random.default_rng(_SEED))
    image = Image.fromarray(painter.pixels())
    return image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


class _Painter:
    """Paints layers in 640x800 coordinates onto a float canvas of the drawing size."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.canvas: FloatImage = np.zeros((height, width, 3), np.float32)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.x, self.y = xs / _SCALE, ys / _SCALE  # in output coordinates

    # -- primitives ---------------------------------------------------------------------

    def mask(self, shape: Shape, blur: float = 0.0) -> _Mask:
        """The 0..1 coverage of what ``shape`` draws (in output coordinates), kept only
        inside its bounding box so that painting costs what the shape covers."""
        image = Image.new("L", (self.width, self.height), 0)
        shape(_ScaledDraw(ImageDraw.Draw(image)))
        box = image.getbbox() or (0, 0, 1, 1)
        pad = int(3 * blur * _SCALE) + 1
        left, top = max(box[0] - pad, 0), max(box[1] - pad, 0)
        right, bottom = min(box[2] + pad, self.width), min(box[3] + pad, self.height)
        image = image.crop((left, top, right, bottom))
        if blur:
            image = image.filter(ImageFilter.GaussianBlur(blur * _SCALE))
        alpha = np.asarray(image, np.float32)[..., None] / 255.0
        return _Mask(alpha, (slice(top, bottom), slice(left, right)))

    def paint(self, mask: _Mask, color: Color | FloatImage, opacity: float = 1.0) -> None:
        colour = np.asarray(color, np.float32)
        if colour.ndim == 3:
            colour = colour[mask.box]
        region = self.canvas[mask.box]
        region += (colour - region) * (mask.alpha * opacity)

    def shade(self, cx: float, cy: float, rx: float, ry: float) -> FloatImage:
        """Light from the upper left on an ellipsoid: 1 at the lit side, darker to the rim."""
        nx, ny = (self.x - cx) / rx, (self.y - cy) / ry
        rim = np.clip(1.0 - (nx**2 + ny**2), 0.0, 1.0) ** 0.35
        light = 1.0 - 0.18 * (nx + 0.6 * ny)
        shading: FloatImage = ((0.55 + 0.45 * rim) * light)[..., None]
        return shading

    # -- layers -------------------------------------------------------------------------

    def background(self) -> None:
        t = (self.y / HEIGHT)[..., None]
        top, bottom = np.array([52, 92, 128], np.float32), np.array([196, 150, 108], np.float32)
        self.canvas[:] = top * (1 - t) + bottom * t
        glow = np.exp(-(((self.x - 250) / 260) ** 2 + ((self.y - 300) / 240) ** 2))[..., None]
        self.canvas += glow * np.array([70, 62, 40], np.float32)
        for cx, cy, r, color in (
            (90, 130, 60, (240, 220, 170)),
            (560, 210, 42, (170, 210, 235)),
            (520, 560, 70, (235, 180, 120)),
            (70, 520, 36, (200, 225, 240)),
        ):
            disc = self.mask(
                lambda d, cx=cx, cy=cy, r=r: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255),
                blur=6,
            )
            self.paint(disc, color, 0.35)

    def body(self) -> None:
        hair_back = self.mask(lambda d: d.ellipse((160, 170, 480, 720), fill=255), blur=2)
        self.hair_back = hair_back
        self.paint(hair_back, np.array([60, 38, 26], np.float32) * self.shade(320, 420, 200, 300))
        neck = self.mask(lambda d: d.rectangle((268, 470, 372, 650), fill=255), blur=1.5)
        self.neck = neck
        self.paint(neck, np.array([205, 150, 118], np.float32) * self.shade(320, 560, 70, 160))
        jacket = self.mask(lambda d: d.chord((40, 600, 600, 1060), 180, 360, fill=255), blur=1.5)
        self.jacket = jacket
        self.paint(jacket, np.array([38, 70, 120], np.float32) * self.shade(320, 830, 300, 260))
        v_neck = self.mask(lambda d: d.polygon([(250, 612), (390, 612), (320, 720)], fill=255), 1)
        self.paint(v_neck, np.array([212, 158, 125], np.float32) * self.shade(320, 600, 90, 140))
        lapels = self.mask(
            lambda d: d.line([(236, 612), (320, 726), (404, 612)], fill=255, width=14), blur=1
        )
        self.paint(lapels, (236, 232, 222))
        chin_shadow = self.mask(lambda d: d.ellipse((262, 470, 378, 560), fill=255), blur=14)
        self.paint(chin_shadow, (120, 72, 56), 0.55)

    def head(self) -> None:
        for ex in (186, 454):
            ear = self.mask(lambda d, ex=ex: d.ellipse((ex - 20, 350, ex + 20, 430), fill=255), 1)
            self.paint(ear, np.array([214, 156, 124], np.float32) * self.shade(ex, 390, 26, 46))
        face = self.mask(lambda d: d.ellipse((192, 220, 448, 548), fill=255), blur=1.2)
        self.face = face
        self.paint(face, np.array([236, 184, 150], np.float32) * self.shade(310, 370, 150, 190))
        for cx in (250, 390):
            blush = self.mask(
                lambda d, cx=cx: d.ellipse((cx - 38, 425, cx + 38, 475), fill=255), blur=14
            )
            self.paint(blush, (226, 120, 112), 0.35)
        fringe = self.mask(
            lambda d: d.polygon(
                [
                    (186, 380),
                    (190, 280),
                    (230, 210),
                    (320, 180),
                    (410, 205),
                    (455, 280),
                    (455, 380),
                    (430, 300),
                    (380, 262),
                    (320, 250),
                    (262, 270),
                    (212, 310),
                ],
                fill=255,
            ),
            blur=2,
        )
        self.paint(fringe, np.array([70, 44, 30], np.float32) * self.shade(300, 250, 170, 120))
        hair = self.full(self.hair_back)
        for cover in (face, self.neck, self.jacket):
            hair *= 1 - self.full(cover)
        hair = np.maximum(self.full(fringe), hair)
        self.hair_strands(np.random.default_rng(_SEED + 1), hair)

    def hair_strands(self, rng: np.random.Generator, hair: FloatImage) -> None:
        """Strands fall from the crown over the head and down the sides; ``hair`` clips them
        to where there is hair, so none cross the face."""

        def strands(d: ImageDraw.ImageDraw, count: int) -> None:
            for _ in range(count):
                spread, wobble = rng.uniform(-1.0, 1.0), rng.uniform(-6, 6)
                length = rng.uniform(0.55, 1.0)
                points = []
                for t in np.linspace(0.0, length, 14):
                    x = 320 + spread * 168 * min(1.0, t / 0.3) ** 0.5 + wobble * np.sin(9 * t)
                    points.append((float(x), float(182 + 520 * t)))
                d.line(points, fill=255, width=2, joint="curve")

        everywhere = (slice(None), slice(None))
        for count, colour, opacity in ((110, (40, 24, 16), 0.55), (60, (150, 106, 70), 0.5)):
            lines = self.mask(lambda d, count=count: strands(d, count), blur=0.6)
            self.paint(_Mask(self.full(lines) * hair, everywhere), colour, opacity)

    def full(self, mask: _Mask) -> FloatImage:
        """A mask's coverage over the whole canvas."""
        alpha = np.zeros((self.height, self.width, 1), np.float32)
        alpha[mask.box] = mask.alpha
        return alpha

    def face_features(self) -> None:
        for cx, tilt in ((262, 1), (378, -1)):
            brow = self.mask(
                lambda d, cx=cx, tilt=tilt: d.line(
                    [(cx - 38, 324 + 4 * tilt), (cx, 314), (cx + 38, 324 - 4 * tilt)],
                    fill=255,
                    width=10,
                    joint="curve",
                ),
                blur=1.5,
            )
            self.paint(brow, (62, 40, 28))
            self.eye(cx)
        nose_side = self.mask(
            lambda d: d.line([(336, 360), (344, 420), (338, 446)], fill=255, width=6), blur=4
        )
        self.paint(nose_side, (150, 96, 76), 0.6)
        tip = self.mask(lambda d: d.ellipse((300, 420, 340, 452), fill=255), blur=6)
        self.paint(tip, (250, 206, 178), 0.6)
        for nx in (304, 336):
            nostril = self.mask(
                lambda d, nx=nx: d.ellipse((nx - 9, 446, nx + 9, 456), fill=255), blur=1.5
            )
            self.paint(nostril, (110, 58, 48), 0.85)
        upper = self.mask(
            lambda d: d.polygon(
                [(270, 496), (300, 484), (320, 490), (340, 484), (370, 496), (320, 502)], fill=255
            ),
            blur=1,
        )
        self.paint(upper, (172, 70, 72))
        lower = self.mask(lambda d: d.chord((276, 478, 364, 524), 0, 180, fill=255), blur=1)
        self.paint(lower, (204, 98, 96))
        parting = self.mask(
            lambda d: d.line([(268, 497), (320, 502), (372, 497)], fill=255, width=3), blur=0.6
        )
        self.paint(parting, (90, 34, 36))
        shine = self.mask(lambda d: d.ellipse((306, 506, 334, 514), fill=255), blur=2)
        self.paint(shine, (245, 190, 180), 0.7)

    def eye(self, cx: float) -> None:
        cy = 362
        white = self.mask(
            lambda d: d.chord((cx - 28, cy - 16, cx + 28, cy + 16), 0, 360, fill=255), blur=0.8
        )
        socket = self.mask(
            lambda d: d.ellipse((cx - 36, cy - 26, cx + 36, cy + 20), fill=255), blur=8
        )
        self.paint(socket, (170, 112, 92), 0.45)
        self.paint(white, (242, 238, 232))
        iris = self.mask(lambda d: d.ellipse((cx - 13, cy - 13, cx + 13, cy + 13), fill=255), 0.6)
        self.paint(_Mask(iris.alpha * self.full(white)[iris.box], iris.box), (84, 120, 70))
        pupil = self.mask(lambda d: d.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=255), 0.5)
        self.paint(_Mask(pupil.alpha * self.full(white)[pupil.box], pupil.box), (16, 12, 10))
        glint = self.mask(lambda d: d.ellipse((cx - 7, cy - 8, cx - 2, cy - 3), fill=255), 0.4)
        self.paint(glint, (255, 255, 255))
        lid = self.mask(
            lambda d: d.arc((cx - 30, cy - 17, cx + 30, cy + 17), 190, 350, fill=255, width=4),
            blur=0.8,
        )
        self.paint(lid, (40, 24, 20))
        lash = self.mask(
            lambda d: d.arc((cx - 28, cy - 15, cx + 28, cy + 15), 20, 160, fill=255, width=2),
            blur=0.8,
        )
        self.paint(lash, (110, 70, 60), 0.7)

    def grain(self, rng: np.random.Generator) -> None:
        noise = rng.normal(0.0, 4.0, (self.height, self.width, 1)).astype(np.float32)
        self.canvas += noise

    def pixels(self) -> np.ndarray:
        return np.clip(self.canvas + 0.5, 0, 255).astype(np.uint8)


class _Mask(NamedTuple):
    alpha: FloatImage  # coverage 0..1, shape (h, w, 1)
    box: tuple[slice, slice]  # where ``alpha`` sits on the canvas


class _ScaledDraw:
    """An ImageDraw that takes output coordinates and draws at the drawing scale."""

    def __init__(self, draw: ImageDraw.ImageDraw) -> None:
        self._draw = draw

    def __getattr__(self, name: str) -> Callable[..., None]:
        method = getattr(self._draw, name)

        def scaled(xy: object, *args: object, **kwargs: Any) -> None:
            if "width" in kwargs:
                kwargs["width"] = int(kwargs["width"] * _SCALE)
            method(_scale(xy), *args, **kwargs)

        return scaled


def _scale(xy: object) -> object:
    if isinstance(xy, list):
        return [(x * _SCALE, y * _SCALE) for x, y in xy]
    if isinstance(xy, tuple) and len(xy) == 4:
        return tuple(v * _SCALE for v in xy)
    raise TypeError(f"unsupported coordinates {xy!r}")
