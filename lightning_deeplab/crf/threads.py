"""How many CPU threads one CRF call uses.

Filtering one image splits every pass (splat, each blur axis, slice) over the threads, and the
threads meet at a barrier after each: about 13 barriers a mean-field iteration for the two
DeepLab kernels, more in the lattice builds. When other processes keep every core busy, the
scheduler pauses our threads in turn and each barrier waits for the paused one, so two threads
end up slower than one (benchmarks/notes-crf-cpu.md, "Loaded machine"). So, by default, a call
on the CPU uses

- torch's thread count (`torch.get_num_threads()`, which `torch.set_num_threads` sets) for a
  batch that the threads share out image by image (each image then runs on one thread, with
  few barriers);
- otherwise as many threads as there are idle cores when the call starts, at least 1 and at most
  torch's thread count. Idle cores: the cores less the threads of other processes that are
  running or waiting to run at that moment (Linux: `/proc/loadavg`); where that cannot be
  read, torch's thread count.

`threads=N` (an argument of `dense_crf` and of the pydensecrf drop-in's constructors) or the
environment variable LIGHTNING_DEEPLAB_CRF_THREADS=N (for every CRF call of the process,
`DenseCRF` and `GaussianCRF` layers and `deeplab crf` included) sets the count outright (the
argument wins); "auto" (or unset) means the rule above. CUDA calls are not affected.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Union

import torch

THREADS_ENV = "LIGHTNING_DEEPLAB_CRF_THREADS"

Threads = Optional[Union[int, str]]


def _parse(name: str, value) -> Optional[int]:
    """A thread count (int >= 1) or None for "auto"."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int or 'auto', got {value!r}")
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive int or 'auto', got {value!r}") from None
    if count < 1 or (not isinstance(value, str) and count != value):
        raise ValueError(f"{name} must be a positive int or 'auto', got {value!r}")
    return count


def check_threads(threads: Threads) -> Threads:
    """Validates a `threads` argument (an int >= 1, "auto" or None) and returns it."""
    _parse("threads", threads)
    return threads


def splits_by_image(batch: int, threads: int) -> bool:
    """Whether the CPU kernels run a batch image by image, one thread each (the rule of
    `parallel_over_images` in csrc/cpu/lattice_filter_cpu.cpp)."""
    return threads > 1 and batch >= threads and (batch % threads == 0 or batch >= 4 * threads)


def other_runnable_threads() -> Optional[int]:
    """Threads of other processes running or ready to run now, or None where unknown.
    /proc/loadavg counts every runnable thread of the machine, this one and any of our
    OpenMP workers still spinning after the last parallel region included: those are
    subtracted."""
    try:
        with open("/proc/loadavg") as file:
            runnable = int(file.read().split()[3].split("/")[0])
        ours = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as file:
                    # state is the field after the parenthesised name
                    if file.read().rsplit(")", 1)[1].split()[0] == "R":
                        ours += 1
            except OSError:
                continue  # the thread ended meanwhile
    except (OSError, ValueError, IndexError):
        return None
    return max(0, runnable - max(ours, 1))


def auto_threads(batch: int = 1) -> int:
    """The default thread count of a CRF call on `batch` images (the module docstring's rule)."""
    limit = torch.get_num_threads()
    if limit <= 1 or splits_by_image(batch, limit):
        return limit
    others = other_runnable_threads()
    if others is None:
        return limit
    idle = (os.cpu_count() or limit) - others
    return max(1, min(limit, idle))


def resolve_threads(threads: Threads = None, batch: int = 1) -> int:
    """The thread count a CPU CRF call uses: `threads` if given, else $LIGHTNING_DEEPLAB_CRF_THREADS
    if set, else `auto_threads(batch)`."""
    count = _parse("threads", threads)
    if count is None:
        count = _parse(f"${THREADS_ENV}", os.environ.get(THREADS_ENV))
    return count if count is not None else auto_threads(batch)


@contextlib.contextmanager
def cpu_threads(threads: Threads = None, batch: int = 1) -> Iterator[int]:
    """Runs the block with torch's CPU thread count set to `resolve_threads(threads, batch)`,
    then restores it; yields the count."""
    count = resolve_threads(threads, batch)
    saved = torch.get_num_threads()
    if count == saved:
        yield count
        return
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(saved)
