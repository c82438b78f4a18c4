"""Fixtures of the data tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from voc_layout import write_voc_tree  # noqa: E402


@pytest.fixture
def make_voc(tmp_path: Path) -> Callable[..., Path]:
    """``make_voc(sizes={"id": (h, w)}, splits={"val": ["id", ...]} or raw text, aug_labels=None)``
    writes a VOC tree under ``tmp_path`` and returns ``tmp_path`` (the folder holding VOCdevkit)."""

    def make(sizes, splits, aug_labels=None) -> Path:
        return write_voc_tree(tmp_path, sizes, splits, aug_labels)

    return make
