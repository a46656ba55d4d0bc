"""The local generator's effects: one function per seeded style key, grouped by the
catalogue's categories (drawing, painting, graphic, digital, photo).

Every effect has the signature ``effect(image, rng) -> image``: it takes an RGB ``uint8``
array and a random generator seeded from the input, and returns a new RGB ``uint8`` array
of the same size. Adding a style to the catalogue with ``generator = 'local'`` means adding
its effect here under the same key.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from portraitkit.generators.styles.digital import cartoon, neon_glow, pixel_art
from portraitkit.generators.styles.drawing import charcoal, ink_wash, pencil_sketch
from portraitkit.generators.styles.graphic import comic_halftone, pop_art, poster
from portraitkit.generators.styles.painting import impressionist, oil_painting, watercolor
from portraitkit.generators.styles.photo import cyanotype, noir, vintage_photo
from portraitkit.generators.styles.tools import Image

Effect = Callable[[Image, np.random.Generator], Image]

EFFECTS: dict[str, Effect] = {
    "pencil_sketch": pencil_sketch,
    "charcoal": charcoal,
    "ink_wash": ink_wash,
    "watercolor": watercolor,
    "oil_painting": oil_painting,
    "impressionist": impressionist,
    "pop_art": pop_art,
    "comic_halftone": comic_halftone,
    "poster": poster,
    "pixel_art": pixel_art,
    "neon_glow": neon_glow,
    "cartoon": cartoon,
    "vintage_photo": vintage_photo,
    "noir": noir,
    "cyanotype": cyanotype,
}

__all__ = ["EFFECTS", "Effect"]
