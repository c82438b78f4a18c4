"""Whether a CPU CRF call can fit the memory available, checked before it allocates.

A 4000x3000 photo with 21 classes takes ~5.6 GiB in the call itself (benchmarks/README.md);
without a check, an input too large for the machine runs until the kernel's out-of-memory
killer ends the process (or the machine swaps for minutes). The estimate below is a lower
bound of what the call allocates, so a call that is refused could not have run; set
LIGHTNING_DEEPLAB_CRF_MEMORY_CHECK=0 to skip the check.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

MEMORY_CHECK_ENV = "LIGHTNING_DEEPLAB_CRF_MEMORY_CHECK"


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
    """A lower bound of the memory a CPU CRF call holds at once during its iterations: two
    [B, N, C] arrays (Q and the array Q rotates with; the fused Potts loop reads -U from the
    caller's unary, other paths hold a third array) and, per kernel of feature dimension
    d, the lattice tables sized by the points (vertex indices and weights per point and per
    vertex list: 16 (d+1) bytes a point). The tables sized by the vertices, the lattice
    buffers and the input itself come on top."""
    pixels = batch * points
    total = 2 * pixels * classes * element_bytes
    for d in dims:
        total += pixels * 16 * (d + 1)
    return total


def check_memory(batch: int, spatial: Sequence[int], classes: int, dims: Sequence[int], element_bytes: int) -> None:
    """Raises MemoryError, naming the size and what to do, when a CPU CRF call on `batch`
    images of `spatial` size with `classes` labels cannot fit the available memory."""
    if os.environ.get(MEMORY_CHECK_ENV, "1").strip() == "0":
        return
    points = 1
    for size in spatial:
        points *= int(size)
    need = required_bytes(batch, points, classes, dims, element_bytes)
    available = available_bytes()
    if available is None or need <= available:
        return
    size = "x".join(str(int(s)) for s in spatial)
    raise MemoryError(
        f"the dense CRF on {batch} image(s) of {size} points with {classes} classes needs at least "
        f"{need / 2**30:.1f} GiB, but only {max(available, 0) / 2**30:.1f} GiB of memory is available: "
        "refine fewer images at once (a smaller batch, or --batch_size 1 for `deeplab crf`), downscale "
        "the image and its scores, or free memory; set "
        f"{MEMORY_CHECK_ENV}=0 to try anyway"
    )
