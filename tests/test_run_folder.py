"""One run per folder (runs/folder.py) and launches that match the Trainer (runs/launch_check.py)."""

from __future__ import annotations

import os
import pickle
import socket

import pytest

from lightning_deeplab.runs import launch_check
from lightning_deeplab.runs.launch_check import check_launch
from lightning_deeplab.runs.folder import LOCK_NAME, RunFolderInUse, claim


def test_a_live_claim_refuses_a_second_naming_its_holder_and_a_released_one_is_clean(tmp_path):
    run = tmp_path / "run"
    first = claim(str(run), str(run / "checkpoints"), resuming=False)
    assert first.notices == []
    holder = (run / LOCK_NAME).read_text()
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in holder
    with pytest.raises(RunFolderInUse, match=rf"another fit is running in this folder \(host .*pid {os.getpid()}"):
        claim(str(run), str(run / "checkpoints"), resuming=True)
    first.release()
    assert (run / LOCK_NAME).read_text() == ""
    second = claim(str(run), str(run / "checkpoints"), resuming=True)
    assert second.notices == []  # the first ended normally: nothing to take over
    second.release()


def test_a_lock_left_by_a_killed_fit_is_taken_over_and_its_partial_files_removed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / LOCK_NAME).write_text("host node7, pid 4242, since 2026-12-01T00:00:00+00:00\n")
    (run / "checkpoints" / ".last.ckpt.x1.partial").write_bytes(b"half")
    (run / ".config.yaml.x2.partial").write_text("half")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"whole")
    taken = claim(str(run), str(run / "checkpoints"), resuming=True)
    assert any("host node7, pid 4242" in notice and "taking it over" in notice for notice in taken.notices)
    assert sum("partial file" in notice for notice in taken.notices) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not (run / ".config.yaml.x2.partial").exists()
    taken.release()


def test_a_new_run_refuses_a_folder_with_an_earlier_runs_checkpoints(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best-step100.ckpt").write_bytes(b"x")
    with pytest.raises(RunFolderInUse, match=r"checkpoints of an earlier run \(best-step100.ckpt\); resume"):
        claim(str(run), str(run / "checkpoints"), resuming=False)
    claim(str(run), str(run / "checkpoints"), resuming=True).release()  # the lock was not kept by the refusal


def test_a_claim_sent_to_a_spawned_process_holds_no_lock(tmp_path):
    held = claim(str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints"), resuming=False)
    copy = pickle.loads(pickle.dumps(held))
    copy.release()  # a no-op: the launching process still holds the folder
    with pytest.raises(RunFolderInUse):
        claim(str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints"), resuming=True)
    held.release()


SLURM = {
    "SLURM_NTASKS": "4",
    "SLURM_JOB_NAME": "train",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_JOB_ID": "17",
    "SLURM_NODELIST": "node[1-2]",
}
TORCHRUN = {"TORCHELASTIC_RUN_ID": "r", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}


@pytest.fixture
def no_launcher(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    "env, devices, nodes, message",
    [
        ({**SLURM, "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2"}, 2, 2, None),
        ({**SLURM, "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_NNODES": "2"}, 2, 2, None),
        (
            {**SLURM, "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2"},
            4,
            2,
            "SLURM starts 2 task.* per node on 2 node",
        ),
        ({**SLURM, "SLURM_TASKS_PER_NODE": "4", "SLURM_NNODES": "1"}, 4, 2, "--trainer.num_nodes 2"),
        (
            {**SLURM, "SLURM_TASKS_PER_NODE": "3(x1),1", "SLURM_NNODES": "2"},
            2,
            2,
            r"different number of tasks on each node \(SLURM_TASKS_PER_NODE=3\(x1\),1\)",
        ),
        (
            {**SLURM, "SLURM_JOB_NAME": "interactive", "SLURM_NTASKS_PER_NODE": "1"},
            4,
            1,
            None,
        ),  # Lightning launches itself
        ({**TORCHRUN, "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}, 4, 2, None),
        (
            {**TORCHRUN, "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"},
            2,
            2,
            r"torchrun starts 4 process\(es\) per node on 2 node",
        ),
        ({**TORCHRUN, "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, 2, 2, "on 1 node"),
        ({}, 8, 4, None),  # no launcher: Lightning starts the processes itself
    ],
)
def test_a_launch_must_match_the_trainers_devices_and_nodes(no_launcher, env, devices, nodes, message):
    for name, value in env.items():
        no_launcher.setenv(name, value)
    if message is None:
        check_launch(devices, nodes)
    else:
        with pytest.raises(ValueError, match=message):
            check_launch(devices, nodes)


def test_only_the_first_process_of_a_launch_claims_the_folder(monkeypatch):
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    for name in ("NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_check.first_process()
    monkeypatch.setenv("NODE_RANK", "1")  # rank 0 of the second node of a multi-node launch
    assert not launch_check.first_process()
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setattr(rank_zero_only, "rank", 3)
    assert not launch_check.first_process()
