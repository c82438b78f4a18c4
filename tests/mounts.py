"""Small tmpfs mounts for the tests of a full disk and of a run folder on another filesystem than
$TMPDIR (tests only). Mounting needs root or CAP_SYS_ADMIN: where it is refused, the test is
skipped and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "150m") mounted on ``folder`` for the block."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small filesystem with")
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({result.stderr.strip() or 'mount failed'}): needs root or CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
