"""A launch whose processes do not match the Trainer's devices and nodes is refused before it
can hang.

Under SLURM each task drives one device, so ``srun`` must start ``--trainer.devices`` tasks on
each of ``--trainer.num_nodes`` nodes; under torchrun ``--nproc-per-node`` and ``--nnodes`` play
those parts. When they disagree, the process group waits forever for ranks that never come
(Lightning issues 20391, 19883, 8707), or two tasks each train the whole model into the same
folder. Lightning compares them only in some cases (``--ntasks-per-node`` given, a DDP strategy).
"""

from __future__ import annotations

import os
import re
from typing import Optional


def _slurm_tasks_per_node() -> tuple[Optional[int], str]:
    """Tasks SLURM starts on each node (None when the nodes differ), and the variable that says so."""
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        value = os.environ.get(name)
        if not value:
            continue
        # "4", "4(x2)" (4 tasks on each of 2 nodes) or "2(x3),1" (nodes that differ)
        counts = {int(match.group(1)) for match in re.finditer(r"(\d+)(?:\(x\d+\))?", value)}
        return (counts.pop() if len(counts) == 1 else None), f"{name}={value}"
    return None, "no SLURM_*TASKS_PER_NODE variable"


def _first_int(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return None


def check_launch(num_devices: int, num_nodes: int) -> None:
    """Raises ValueError (one line: what the launcher started, what the Trainer expects, what to
    change) when a SLURM or torchrun launch disagrees with ``num_devices`` per node on
    ``num_nodes`` nodes; does nothing outside those launchers."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    expected = f"--trainer.devices {num_devices} and --trainer.num_nodes {num_nodes}"
    if SLURMEnvironment.detect():
        per_node, source = _slurm_tasks_per_node()
        nodes = _first_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
        if per_node is None:
            raise ValueError(
                f"SLURM starts a different number of tasks on each node ({source}), but every node runs "
                f"{num_devices} device(s) ({expected}): start the same number of tasks per node (--ntasks-per-node)"
            )
        if per_node != num_devices or (nodes is not None and nodes != num_nodes):
            raise ValueError(
                f"SLURM starts {per_node} task(s) per node on {nodes if nodes is not None else '?'} node(s), but the "
                f"run expects {expected} (one task per device): make them equal (#SBATCH --ntasks-per-node="
                f"{num_devices} --nodes={num_nodes}, or change --trainer.devices / --trainer.num_nodes), or the job hangs"
            )
    elif TorchElasticEnvironment.detect():
        per_node = _first_int("LOCAL_WORLD_SIZE")
        world = _first_int("WORLD_SIZE")
        nodes = world // per_node if world and per_node else None
        if per_node != num_devices or nodes != num_nodes:
            raise ValueError(
                f"torchrun starts {per_node} process(es) per node on {nodes} node(s) (LOCAL_WORLD_SIZE={per_node}, "
                f"WORLD_SIZE={world}), but the run expects {expected}: make them equal (torchrun --nproc-per-node="
                f"{num_devices} --nnodes={num_nodes}, or change --trainer.devices / --trainer.num_nodes), or the job hangs"
            )


def first_process() -> bool:
    """Whether this is the first process of the launch (global rank 0), from what the launcher
    set before Lightning starts (RANK, LOCAL_RANK, SLURM_PROCID, NODE_RANK, GROUP_RANK); a
    single process is the first."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0 and all(
        os.environ.get(name, "0") in ("", "0") for name in ("NODE_RANK", "GROUP_RANK")
    )
