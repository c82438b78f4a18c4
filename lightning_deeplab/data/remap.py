"""Mapping the label values a dataset stores (raw ids) to contiguous class indices."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..constants import IGNORE_INDEX


def as_integer_labels(label: np.ndarray, path: Path) -> np.ndarray:
    """``label`` as an integer array; float arrays (MATLAB's default type) are accepted when
    every value is a whole number. Anything else raises ValueError naming ``path``."""
    if label.dtype.kind in "ui":
        return label
    if label.dtype.kind == "f" and np.all(np.isfinite(label)) and np.array_equal(label, np.round(label)):
        return label.astype(np.int64)
    raise ValueError(
        f"label {path} has dtype {label.dtype} with values that are not whole numbers; expected integer label ids"
    )


def present_values(label: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array, sorted (a histogram for small unsigned types,
    several times faster than sorting a 2048x1024 label)."""
    if label.dtype.kind == "u" and label.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(label.ravel()))
    return np.unique(label)


class LabelRemap:
    """A lookup table from stored label values to class indices (or the ignore index).

    Args:
        table: stored value -> class index (or ``IGNORE_INDEX``). Stored values absent from
            ``table`` are not valid labels of the dataset: :meth:`__call__` refuses them, so a
            label file of another dataset (or a corrupt one) is not silently read as "ignore".
        description: what the valid stored values are, for error messages
            (e.g. "Cityscapes label ids 0-33").
    """

    def __init__(self, table: Mapping[int, int], description: str) -> None:
        if not table:
            raise ValueError("table must map at least one stored value")
        if min(table) < 0:
            raise ValueError(f"stored values must be >= 0, got {min(table)}")
        bad = {k: v for k, v in table.items() if not (0 <= v < IGNORE_INDEX or v == IGNORE_INDEX)}
        if bad:
            raise ValueError(f"class indices must lie in [0, {IGNORE_INDEX}], got {bad}")
        self.description = description
        self.lut = np.zeros(max(table) + 1, dtype=np.uint8)
        self.valid = np.zeros(max(table) + 1, dtype=bool)
        for stored, index in table.items():
            self.lut[stored] = index
            self.valid[stored] = True

    def __call__(self, label: np.ndarray, path: Path) -> np.ndarray:
        """Map an integer label array; raise ValueError naming ``path`` when it holds values
        that are not in the table."""
        label = as_integer_labels(label, path)
        values = present_values(label)
        unknown = values[(values < 0) | (values >= len(self.lut))]
        known = values[(values >= 0) & (values < len(self.lut))]
        unknown = np.concatenate([unknown, known[~self.valid[known]]])
        if unknown.size:
            unknown = np.sort(unknown)
            shown = ", ".join(str(v) for v in unknown[:10]) + (", ..." if unknown.size > 10 else "")
            raise ValueError(f"label {path} holds values {{{shown}}} that are not {self.description}")
        return self.lut[label]
