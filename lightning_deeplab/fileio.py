"""Writing files so that readers see the whole file or none of it: a crash, a kill or Ctrl-C
never leaves a half-written prediction, report, label or checkpoint behind, and a full disk
leaves the previous file as it was.

Every file is written to a partial file beside it (``.<name>.<random>.partial``, in the same
folder, so the final rename never crosses filesystems) and renamed over it once complete. A
process killed mid-write leaves only such a partial file, which `remove_partial_files` clears.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Union

PathLike = Union[str, "os.PathLike[str]"]

#: The name ending of the files being written (see the module's docstring).
PARTIAL_SUFFIX = ".partial"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write that found no space left on its device (or the user's quota used up): nothing
    was written to ``filename``, and the file there before, if any, is unchanged."""

    def __init__(self, code: int, path: PathLike) -> None:
        super().__init__(code, os.strerror(code), str(path))

    def __str__(self) -> str:
        return (
            f"{self.filename}: the disk is full ({self.strerror}); it was not written, and the file "
            "there before, if any, is unchanged"
        )


def disk_full_code(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``error`` or an exception it was raised from is a full disk (torch's
    writer reports one as a RuntimeError raised while handling the OSError of the write)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def _fsync_path(path: PathLike) -> None:
    """Flush a file's or a folder's content (a folder: the names it holds) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):  # folders some filesystems cannot sync
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike, durable: bool = False) -> Iterator[Path]:
    """A partial path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without error, removed otherwise. Parent folders are created. ``durable`` also flushes the
    file, then the folder's new entry, to the disk (checkpoints, scores, configurations: a power
    loss after the block keeps them). A full disk raises :class:`DiskFullError`."""
    path = Path(path).expanduser()
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
        os.close(handle)
        yield Path(temporary)
        if durable:
            _fsync_path(temporary)
        # mkstemp creates owner-only files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
        if durable:
            _fsync_path(path.parent)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        code = None if isinstance(error, DiskFullError) else disk_full_code(error)
        if code is not None:
            raise DiskFullError(code, path) from error
        raise


@contextmanager
def atomic_output(path: PathLike, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """An open file (``mode`` "w" or "wb") whose content appears at ``path`` only once the block
    ends without error; ``durable`` as in :func:`atomic_path`."""
    with atomic_path(path, durable) as temporary, open(temporary, mode) as handle:
        yield handle


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically and durably (NaN is refused: it is not JSON)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    with atomic_output(path, "w", durable=True) as handle:
        handle.write(text + "\n")


def partial_files(folder: PathLike) -> list[Path]:
    """The partial files of interrupted writes directly in ``folder`` (none if it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(PARTIAL_SUFFIX))


def remove_partial_files(folder: PathLike) -> list[Path]:
    """Removes the partial files a killed writer left directly in ``folder``; returns them. Only
    for folders no live process writes to (a run folder whose lock this process holds)."""
    removed = partial_files(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
