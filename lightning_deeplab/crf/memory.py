"""Whether a CPU CRF call can fit the memory available, checked before it allocates.

A 4000x3000 photo with 21 classes takes ~3.8 GiB in the call itself (benchmarks/README.md);
without a check, an input too large for the machine runs until the kernel's out-of-memory
killer ends the process (or the machine swaps for minutes). The estimate below is a lower
bound of what the call allocates, so a call that is refused could not have run; set
LIGHTNING_DEEPLAB_CRF_MEMORY_CHECK=0 to skip the check.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

MEMORY_CHECK_ENV = "LIGHTNING_DEEPLAB_CRF_MEMORY_CHECK"

#: What the CPU operators' buffer pool keeps at most for reuse (csrc/cpu/buffer_pool.h,
#: kMaxCachedBytes). A call that needs more than this gives the pool's blocks back before its
#: iterations and before its output copy: at 4000x3000 they are the normalisation filters'
#: blocks (~180 MB, which no request of the loop fits) and then the freed lattice tables
#: (~1 GB), which would otherwise stay resident beside the loop and the output; the next call
#: of that size loses only their page faults (about 1% of its time: ~1 GiB of fresh pages
#: against a 90 s call).
POOL_CACHE_BYTES = 1 << 30


def available_bytes() -> Optional[int]:
    """Memory this process can still take without swapping (Linux MemAvailable, or the room
    left under a cgroup v2 limit where that is smaller); None where unknown."""
    available = None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as file:
            limit = file.read().strip()
        with open("/sys/fs/cgroup/memory.current") as file:
            used = int(file.read())
        if limit != "max" and available is not None:
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def required_bytes(batch: int, points: int, classes: int, dims: Sequence[int], element_bytes: int) -> int:
    """A lower bound of the memory a CPU CRF call holds at once: Q ([B, N, C]; the fused
    Potts loop updates it in place and reads -U from the caller's unary) with, during the
    iterations, each kernel's per-point lattice tables (the vertex indices and weights,
    8 (d+1) bytes a point), or at the end the output's [B, C, ...] copy, whichever is larger.
    The tables sized by the vertices, the lattice buffers and the input come on top."""
    array = batch * points * classes * element_bytes
    tables = sum(batch * points * 8 * (d + 1) for d in dims)
    return array + max(array, tables)


def check_memory(batch: int, spatial: Sequence[int], classes: int, dims: Sequence[int], element_bytes: int) -> int:
    """Raises MemoryError, naming the size and what to do, when a CPU CRF call on `batch`
    images of `spatial` size with `classes` labels cannot fit the available memory; returns
    the call's `required_bytes`."""
    points = 1
    for size in spatial:
        points *= int(size)
    need = required_bytes(batch, points, classes, dims, element_bytes)
    if os.environ.get(MEMORY_CHECK_ENV, "1").strip() == "0":
        return need
    available = available_bytes()
    if available is None or need <= available:
        return need
    size = "x".join(str(int(s)) for s in spatial)
    raise MemoryError(
        f"the dense CRF on {batch} image(s) of {size} points with {classes} classes needs at least "
        f"{need / 2**30:.1f} GiB, but only {max(available, 0) / 2**30:.1f} GiB of memory is available: "
        "refine fewer images at once (a smaller batch, or --batch_size 1 for `deeplab crf`), downscale "
        "the image and its scores, or free memory; set "
        f"{MEMORY_CHECK_ENV}=0 to try anyway"
    )
