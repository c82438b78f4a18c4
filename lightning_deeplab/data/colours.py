"""Building a 256-entry palette from a dataset's own class colours."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..constants import IGNORE_INDEX
from .palette import VOC_PALETTE

Colour = Sequence[int]


def build_palette(colours: Sequence[Optional[Colour]], ignore_colour: Optional[Colour] = None) -> np.ndarray:
    """A read-only ``[256, 3]`` uint8 RGB palette: entry ``i`` is ``colours[i]``.

    Entries without a colour (None, or beyond ``colours``) keep the VOC colour map's entry, so
    every label value still gets a colour. ``ignore_colour`` (None: VOC's cream) colours 255.
    """
    if len(colours) > IGNORE_INDEX:
        raise ValueError(f"at most {IGNORE_INDEX} class colours fit a palette, got {len(colours)}")
    palette = VOC_PALETTE.copy()
    for index, colour in enumerate(colours):
        if colour is not None:
            palette[index] = _checked(colour, f"colour of class {index}")
    if ignore_colour is not None:
        palette[IGNORE_INDEX] = _checked(ignore_colour, "ignore_colour")
    palette.setflags(write=False)
    return palette


def _checked(colour: Colour, what: str) -> np.ndarray:
    values = np.asarray(colour)
    if values.shape != (3,) or values.dtype.kind not in "ui" or values.min() < 0 or values.max() > 255:
        raise ValueError(f"{what} must be three ints in [0, 255] (R, G, B), got {colour!r}")
    return values.astype(np.uint8)
