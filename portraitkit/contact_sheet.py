"""One image showing a batch at a glance: the source photo, then every result, labelled.

Pillow only. Items without an image (failed, cancelled, still running) get a grey tile
with their status, so the sheet always has one tile per style, in the batch's order.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from portraitkit.client import PortraitClient
from portraitkit.errors import NotFound
from portraitkit.models import Batch

TILE_WIDTH, TILE_HEIGHT = 240, 300  # the sample portrait's 4:5
LABEL_HEIGHT = 30
GAP = 12
TITLE_HEIGHT = 40
BACKGROUND = (245, 244, 240)
TILE_BACKGROUND = (225, 223, 218)
TEXT = (30, 30, 30)
MUTED = (120, 120, 120)
MAX_COLUMNS = 4


@dataclass(frozen=True)
class Tile:
    """One labelled cell: an encoded image, or none (then ``note`` says why)."""

    label: str
    image: bytes | None
    note: str = ""


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(data: bytes) -> Image.Image:
    """The image scaled and centre-cropped to a tile."""
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.fit(
            image.convert("RGB"), (TILE_WIDTH, TILE_HEIGHT), Image.Resampling.LANCZOS
        )


def _centred(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    fill: tuple[int, int, int],
) -> None:
    """``text`` centred in ``box``, shortened with an ellipsis if it does not fit."""
    left, top, right, bottom = box
    room = right - left - 8
    if draw.textlength(text, font=font) > room:
        while len(text) > 1 and draw.textlength(text + "…", font=font) > room:
            text = text[:-1]
        text += "…"
    draw.text(((left + right) / 2, (top + bottom) / 2), text, font=font, fill=fill, anchor="mm")


def build_contact_sheet(tiles: list[Tile], title: str = "") -> Image.Image:
    """A grid of tiles, at most four across, each with its label underneath."""
    columns = min(MAX_COLUMNS, max(1, math.ceil(math.sqrt(len(tiles)))))
    rows = max(1, math.ceil(len(tiles) / columns))
    cell_height = TILE_HEIGHT + LABEL_HEIGHT
    top = TITLE_HEIGHT if title else GAP
    sheet = Image.new(
        "RGB",
        (GAP + columns * (TILE_WIDTH + GAP), top + rows * (cell_height + GAP)),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    label_font, note_font = _font(16), _font(14)
    if title:
        _centred(draw, (0, 0, sheet.width, TITLE_HEIGHT), title, _font(18), TEXT)
    for index, tile in enumerate(tiles):
        x = GAP + (index % columns) * (TILE_WIDTH + GAP)
        y = top + (index // columns) * (cell_height + GAP)
        if tile.image is not None:
            sheet.paste(_fit(tile.image), (x, y))
        else:
            draw.rectangle((x, y, x + TILE_WIDTH - 1, y + TILE_HEIGHT - 1), fill=TILE_BACKGROUND)
            _centred(
                draw,
                (x, y, x + TILE_WIDTH, y + TILE_HEIGHT),
                tile.note or "no image",
                note_font,
                MUTED,
            )
        _centred(
            draw,
            (x, y + TILE_HEIGHT, x + TILE_WIDTH, y + cell_height),
            tile.label,
            label_font,
            TEXT,
        )
    return sheet


async def batch_tiles(client: PortraitClient, batch: Batch) -> list[Tile]:
    """The source photo, then each item's result (read through the client's storage)."""
    if client.storage is None:
        raise RuntimeError("This client has no storage to read the images from.")
    storage = client.storage

    async def fetch(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return await storage.get(path)
        except NotFound:
            return None

    tiles = [Tile("Source", await fetch(batch.original_image_url), "source missing")]
    for item in sorted(batch.items, key=lambda i: i.position):
        image = await fetch(item.generated_image_url)
        tiles.append(Tile(item.style_name, image, str(item.status) if image is None else ""))
    return tiles


async def write_contact_sheet(client: PortraitClient, batch: Batch, target: Path) -> Path:
    """Build the batch's contact sheet and save it as PNG at ``target``."""
    tiles = await batch_tiles(client, batch)
    title = (
        f"Batch {str(batch.id)[:8]}: {batch.completed_count}/{batch.total_count} photos, "
        f"{batch.status}"
    )
    sheet = build_contact_sheet(tiles, title)
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target, format="PNG")
    return target
