"""The PASCAL VOC colour map: the palette that label PNGs and colour predictions are written with."""

from __future__ import annotations

import numpy as np


def voc_colormap(num_entries: int = 256) -> np.ndarray:
    """Return the VOC colour map as a ``[num_entries, 3]`` uint8 array (RGB).

    Entry ``i`` interleaves the bits of ``i``: bit 0, 1, 2 of every 3-bit group go to R, G, B,
    filling each channel from its most significant bit down. Index 255 (ignore) comes out cream,
    the colour of object borders in the official label PNGs.
    """
    if not 1 <= num_entries <= 256:
        raise ValueError(f"num_entries must lie in [1, 256], got {num_entries}")
    index = np.arange(num_entries)
    colours = np.zeros((num_entries, 3), dtype=np.uint8)
    for shift in range(8):
        group = index >> (3 * shift)
        for channel in range(3):
            bit = (group >> channel) & 1
            colours[:, channel] |= (bit << (7 - shift)).astype(np.uint8)
    return colours


#: The 256-entry VOC palette; label PNGs of every VOC-layout dataset here are written with it.
VOC_PALETTE: np.ndarray = voc_colormap()
VOC_PALETTE.setflags(write=False)
