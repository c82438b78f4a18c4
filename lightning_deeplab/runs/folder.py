"""One run per folder: a fit claims its run folder (``--trainer.default_root_dir``) before it
writes anything there, and holds it until it ends.

- A live fit holds an exclusive lock on ``<folder>/run.lock`` (an OS file lock, released by the
  kernel however the process ends, also on NFS and Lustre mounts with locking) and writes its
  host and pid into it; a second fit into the folder is refused, naming them.
- A lock file whose holder is gone without clearing it (a SIGKILL, a node failure) is taken over
  with a notice.
- A fit that does not resume refuses a folder that already holds checkpoints: `last.ckpt` and
  `best-step*.ckpt` of two runs side by side would make `--ckpt_path last|best` pick across them.
- Partial files of writes that a kill interrupted (`fileio`) are removed from the folder and
  its checkpoint folder.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO, Optional

from ..fileio import remove_partial_files

#: The lock file in a run folder.
LOCK_NAME = "run.lock"
#: Errors of a filesystem that has no file locks (some NFS mounts without lockd, Lustre without
#: ``-o flock``).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunFolderInUse(ValueError):
    """A run folder that another live fit holds, or that holds another run's checkpoints."""


class RunFolderClaim:
    """A run folder this process holds (see the module's docstring); `release()` ends it."""

    def __init__(self, folder: Path, handle: Optional[IO[str]], notices: list[str]) -> None:
        self.folder = folder
        self._handle = handle
        #: What the claim found and did (a stale lock taken over, partial files removed).
        self.notices = notices

    def __getstate__(self) -> dict:
        # a process started by ddp_spawn gets the claim without its lock: its launcher holds it
        return {**self.__dict__, "_handle": None}

    def release(self) -> None:
        """Clears the holder from the lock file (so the next fit sees a clean end) and unlocks it."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.seek(0)
            handle.truncate()
            handle.flush()
        finally:
            handle.close()  # closing the file releases its lock


def _holder() -> str:
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"host {socket.gethostname()}, pid {os.getpid()}, since {since}"


def claim(folder: str, checkpoint_dir: str, resuming: bool) -> RunFolderClaim:
    """Claims ``folder`` for a fit that writes its checkpoints to ``checkpoint_dir``; raises
    :class:`RunFolderInUse` (one line: who holds it, or what is in it, and what to do)."""
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    notices: list[str] = []
    handle: Optional[IO[str]] = open(root / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                handle.seek(0)
                holder = handle.read().strip() or "holder unknown"
                raise RunFolderInUse(
                    f"--trainer.default_root_dir {root}: another fit is running in this folder ({holder}); wait for "
                    "it to end, or give this run another folder"
                ) from None
            if error.errno not in _NO_LOCKS:
                raise
            notices.append(
                f"the filesystem of {root} has no file locks: a second fit into this folder would not be noticed"
            )
            handle.close()
            handle = None
        if handle is not None:
            handle.seek(0)
            previous = handle.read().strip()  # cleared by every fit that ended normally
            if previous:
                notices.append(f"the previous fit in {root} ({previous}) ended without releasing it; taking it over")
        checkpoints = sorted(Path(checkpoint_dir).glob("*.ckpt")) if Path(checkpoint_dir).is_dir() else []
        if checkpoints and not resuming:
            names = ", ".join(p.name for p in checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
            raise RunFolderInUse(
                f"--trainer.default_root_dir {root}: it holds the checkpoints of an earlier run ({names}); resume "
                "that run with --ckpt_path last, or give a new run another folder"
            )
        for partial_folder in (root, Path(checkpoint_dir)):
            removed = remove_partial_files(partial_folder)
            if removed:
                notices.append(f"removed {len(removed)} partial file(s) of interrupted writes from {partial_folder}")
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(_holder() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return RunFolderClaim(root, handle, notices)
