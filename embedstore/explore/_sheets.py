"""Thumbnails of stored images and contact sheets: rows of captioned thumbnails in one PNG.

``duplicates`` (near-duplicate groups), ``heads issues`` (suspected label errors beside their
nearest neighbours) and ``heads report`` (inline thumbnails) draw with these. Stored images are
read from ``root`` joined with the row's relative ``path`` and decoded by :func:`decode_image`;
a file that has moved or cannot be decoded becomes a grey "no image" tile rather than an error.

>>> sheet = [("group 1", [Tile(load_thumbnail(root, "a.jpg"), ["daisy", "sim 0.97"])])]
>>> contact_sheet(sheet, "dups.png", title="Near-duplicates")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from PIL import Image, ImageDraw, ImageFont

from embedstore._images import ImageError, decode_image, read_bytes

THUMB_PX = 128
_PAD_PX = 8
_BACKGROUND = (255, 255, 255)
_EMPTY = (225, 225, 225)
_TEXT = (30, 30, 30)
_Font: TypeAlias = "ImageFont.ImageFont | ImageFont.FreeTypeFont"  # FreeType: with sizes


@dataclass
class Tile:
    """One thumbnail (``None``: drawn as "no image") with caption lines and a border colour."""

    image: Image.Image | None
    caption: list[str] = field(default_factory=list)
    color: str | None = None  # a PIL colour name or "#rrggbb"; None: no border


def image_file(root: str | None, path: str | None) -> str | None:
    """The stored image's file: ``root`` joined with the relative ``path`` (None if unknown;
    without a root only an absolute path, never one relative to the working folder)."""
    if not path:
        return None
    if root:
        return os.path.join(root, path)
    return path if os.path.isabs(path) else None


def load_thumbnail(
    root: str | None, path: str | None, size_px: int = THUMB_PX
) -> Image.Image | None:
    """The image at ``root``/``path`` fitted into ``size_px`` x ``size_px`` (RGB), or None when
    the file is missing or cannot be decoded."""
    file = image_file(root, path)
    if file is None:
        return None
    try:
        im = decode_image(read_bytes(file))
    except (ImageError, OSError):
        return None
    im.thumbnail((size_px, size_px))
    return im


def _font(size_px: int) -> _Font:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: _Font, width_px: int) -> str:
    """``text`` shortened with an ellipsis so that it fits ``width_px``."""
    if draw.textlength(text, font=font) <= width_px:
        return text
    while text and draw.textlength(text + "...", font=font) > width_px:
        text = text[:-1]
    return text + "..."


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: _Font, width_px: int) -> list[str]:
    """``text`` broken into lines at spaces so that each fits ``width_px``."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width_px:
            lines[-1] += " " + word
        else:
            lines.append(_fit(draw, word, font, width_px))
    return lines


def contact_sheet(
    rows: list[tuple[str, list[Tile]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    tile_px: int = THUMB_PX,
    caption_lines: int = 3,
) -> Path:
    """Write a PNG of ``rows`` (``(heading, tiles)``, one line of thumbnails each) to ``path``.

    Each tile is ``tile_px`` square (the image centred in it) with up to ``caption_lines`` lines
    of caption under it; a tile's ``color`` draws a 3-px border (e.g. red for a leak).
    """
    font, head_font, title_font = _font(11), _font(13), _font(15)
    line_px, head_px = 14, 20
    cell_w = tile_px + _PAD_PX
    cell_h = tile_px + caption_lines * line_px + _PAD_PX
    n_cols = max([len(t) for _, t in rows] + [1])
    width = max(_PAD_PX + n_cols * cell_w, 480)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = _wrap(measure, title, title_font, width - 2 * _PAD_PX) if title else []
    title_px = 6 + 19 * len(title_lines)
    height = title_px + _PAD_PX + len(rows) * (head_px + cell_h) + _PAD_PX
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(title_lines):
        draw.text((_PAD_PX, 6 + 19 * i), line, fill=_TEXT, font=title_font)
    y = title_px + _PAD_PX
    for heading, tiles in rows:
        draw.text(
            (_PAD_PX, y + 3),
            _fit(draw, heading, head_font, sheet.width - 2 * _PAD_PX),
            fill=_TEXT,
            font=head_font,
        )
        y += head_px
        for i, tile in enumerate(tiles):
            x = _PAD_PX + i * cell_w
            _draw_tile(sheet, draw, tile, x, y, tile_px, font, line_px, caption_lines)
        y += cell_h
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", compress_level=3)
    return out


def _draw_tile(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    tile: Tile,
    x: int,
    y: int,
    tile_px: int,
    font: _Font,
    line_px: int,
    caption_lines: int,
) -> None:
    if tile.image is None:
        draw.rectangle((x, y, x + tile_px - 1, y + tile_px - 1), fill=_EMPTY)
        draw.text(
            (x + tile_px // 2, y + tile_px // 2),
            "no image",
            fill=(120, 120, 120),
            font=font,
            anchor="mm",
        )
    else:
        im = tile.image
        if max(im.size) > tile_px:
            im = im.copy()
            im.thumbnail((tile_px, tile_px))
        sheet.paste(im, (x + (tile_px - im.width) // 2, y + (tile_px - im.height) // 2))
    if tile.color:
        draw.rectangle(
            (x - 2, y - 2, x + tile_px + 1, y + tile_px + 1), outline=tile.color, width=3
        )
    for j, line in enumerate(tile.caption[:caption_lines]):
        draw.text(
            (x, y + tile_px + 3 + j * line_px),
            _fit(draw, line, font, tile_px),
            fill=_TEXT,
            font=font,
        )
