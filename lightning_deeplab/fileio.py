"""Writing files so that readers see the whole file or none of it (a crash or Ctrl-C never
leaves a half-written prediction, report, label or checkpoint behind)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without error, removed otherwise. Parent folders are created."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        # mkstemp creates owner-only files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: PathLike, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """An open file (``mode`` "w" or "wb") whose content appears at ``path`` only once the block
    ends without error. ``fsync`` also flushes it to the disk first (large checkpoints)."""
    with atomic_path(path) as temporary, open(temporary, mode) as handle:
        yield handle
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (NaN is refused: it is not JSON)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    with atomic_output(path, "w") as handle:
        handle.write(text + "\n")
