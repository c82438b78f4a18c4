"""Pictures people can read: a title over each panel and a legend of the classes a picture
shows (colour swatch + name), drawn with PIL's default font at a size that follows the image."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .constants import IGNORE_INDEX
from .data.files import full_palette

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


class Entry(NamedTuple):
    """One line of a legend: a class index, its name and its colour."""

    index: int
    name: str
    colour: tuple[int, int, int]


def font_size(height: int, width: int) -> int:
    """Text height in pixels for a picture of ``height`` x ``width``: readable on a small image
    at 1:1, not shouting on a large one."""
    return int(min(48, max(11, round(min(height, width) / 24))))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def background_classes(class_names: Optional[Sequence[str]]) -> tuple[int, ...]:
    """The classes named "background": an overlay leaves their pixels as the photo."""
    return tuple(i for i, name in enumerate(class_names or ()) if str(name).strip().lower() == "background")


def class_name(index: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return "ignore" if index == IGNORE_INDEX else f"class {index}"


def legend_entries(
    masks: Iterable[np.ndarray], palette, class_names: Optional[Sequence[str]] = None, leave_out: Iterable[int] = ()
) -> list[Entry]:
    """The classes present in any of ``masks`` (label maps), in index order, less ``leave_out``."""
    present = set()
    for mask in masks:
        present.update(int(v) for v in np.unique(np.asarray(mask)))
    colours = full_palette(palette)
    skipped = set(leave_out)
    return [
        Entry(i, class_name(i, class_names), tuple(int(c) for c in colours[min(max(i, 0), 255)]))
        for i in sorted(present - skipped)
    ]


def legend_band(entries: Sequence[Entry], width: int, size: int) -> np.ndarray:
    """A white band ``width`` wide listing ``entries`` as swatch + name, wrapped onto as many
    rows as it takes; [rows * line, width, 3] uint8 (no rows without entries)."""
    font = _font(size)
    pad, line = max(2, size // 3), int(size * 1.5)
    items, x, row = [], pad, 0
    for entry in entries:
        item_width = size + pad + int(font.getlength(entry.name)) + 2 * pad
        if x > pad and x + item_width > width:
            x, row = pad, row + 1
        items.append((x, row, entry))
        x += item_width
    rows = row + 1 if entries else 0
    band = Image.new("RGB", (width, rows * line), BACKGROUND)
    draw = ImageDraw.Draw(band)
    for x, row, entry in items:
        top = row * line + (line - size) // 2
        draw.rectangle([x, top, x + size - 1, top + size - 1], fill=entry.colour, outline=INK)
        draw.text((x + size + pad, top + size // 2), entry.name, fill=INK, font=font, anchor="lm")
    return np.asarray(band)


#: The smallest text a title shrinks to on a narrow panel.
MIN_TITLE_SIZE = 8


def fitting_font(text: str, width: int, size: int) -> ImageFont.ImageFont:
    """The default font at ``size``, or smaller (down to MIN_TITLE_SIZE) until ``text`` fits ``width``."""
    font = _font(size)
    while size > MIN_TITLE_SIZE and font.getlength(text) > width:
        size -= 1
        font = _font(size)
    return font


def title_band(titles: Sequence[str], panel_width: int, size: int) -> np.ndarray:
    """A white band with each title centred over its panel (panels side by side, equally wide),
    a title shrunk where its panel is too narrow for it, so neighbours never overlap."""
    line = int(size * 1.5)
    band = Image.new("RGB", (panel_width * len(titles), line), BACKGROUND)
    draw = ImageDraw.Draw(band)
    for k, title in enumerate(titles):
        font = fitting_font(title, panel_width - 4, size)
        draw.text((k * panel_width + panel_width // 2, line // 2), title, fill=INK, font=font, anchor="mm")
    return np.asarray(band)


#: The bands above a picture are padded to a multiple of this many rows: the picture then starts
#: on a JPEG block boundary, and the white of the bands never bleeds into its colours.
BLOCK = 16


def _pad_rows(band: np.ndarray, multiple: int = BLOCK) -> np.ndarray:
    """A white ``band`` with white rows added below, up to a multiple of ``multiple`` rows."""
    missing = -len(band) % multiple
    return np.concatenate([band, np.full((missing, *band.shape[1:]), 255, band.dtype)], axis=0)


def sheet(panels: Sequence[np.ndarray], entries: Sequence[Entry], titles: Optional[Sequence[str]] = None) -> np.ndarray:
    """Equally sized HxWx3 panels side by side, below the legend of ``entries`` and a title over
    each panel (``titles``); the pictures come last, unmixed with the bands (see BLOCK)."""
    height, width = panels[0].shape[:2]
    size = font_size(height, width)
    bands = [legend_band(entries, width * len(panels), size)]
    bands += [title_band(titles, width, size)] if titles else []
    bands = [band for band in bands if len(band)]
    head = [_pad_rows(np.concatenate(bands, axis=0))] if bands else []
    return np.concatenate(head + [np.concatenate(panels, axis=1)], axis=0)
