"""Contact sheets: the query image, then its neighbours left to right, each captioned with id and score
(and, explained, a second row: the query as each neighbour sees it), because people would rather look at
retrieval results than read them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from indexes.files import atomic_write_bytes

CAPTION_HEIGHT = 28
GAP = 6


def contact_sheet(
    query: Image.Image,
    neighbours: Sequence[tuple[Image.Image, str, float]],
    title: str = "query",
    thumb: int = 128,
    query_views: Sequence[Image.Image] | None = None,
) -> Image.Image:
    """One row: `query` then each (image, id, score) neighbour, scaled to `thumb` px and captioned. With
    `query_views` (one per neighbour, e.g. the query under each neighbour's explanation), a second row
    shows them under their neighbours."""
    font = ImageFont.load_default()
    tiles = [(query, title, "")] + [(im, str(i), f"{score:.3f}") for im, i, score in neighbours]
    rows = [tiles] if query_views is None else [tiles, [None] + [(im, "query", "") for im in query_views]]
    row_height = thumb + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", (len(tiles) * (thumb + GAP) + GAP, len(rows) * row_height + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for col, tile in enumerate(row):
            if tile is None:
                continue
            image, line1, line2 = tile
            x, y = GAP + col * (thumb + GAP), GAP + r * row_height
            sheet.paste(_fit(image, thumb), (x, y))
            if col == 0:
                draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline="black", width=2)
            draw.text((x, y + thumb + 3), _clip(line1, draw, font, thumb), fill="black", font=font)
            draw.text((x, y + thumb + 15), line2, fill="dimgray", font=font)
    return sheet


def write_contact_sheet(path: str | Path, query: Image.Image, neighbours: Sequence[tuple[Image.Image, str, float]],
                        title: str = "query", thumb: int = 128,
                        query_views: Sequence[Image.Image] | None = None) -> Path:
    """Render `contact_sheet` and save it as PNG at `path`, atomically (through a symlink; a device or FIFO
    there is refused, never replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    contact_sheet(query, neighbours, title, thumb, query_views).save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())
    return path


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Scale to fit a `size` square (nearest-neighbour when enlarging, so small images stay crisp), centred."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    resample = Image.NEAREST if scale > 1 else Image.BICUBIC
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    tile = Image.new("RGB", (size, size), "white")
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def _clip(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> str:
    """Shorten `text` with a trailing "..." until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
