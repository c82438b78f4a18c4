"""Runs that lose nothing to the faults of clusters, through the `deeplab` command on the synthetic
data: SIGKILL at random moments and during checkpoint writes, with the run folder on another
filesystem than $TMPDIR and on the same one; a disk that fills up; two fits into one folder;
damaged checkpoint files given to every command; a launch that does not match the Trainer."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lightning_deeplab.runs.checkpoint_config import read_checkpoint
from lightning_deeplab.commands.main import main
from lightning_deeplab.fileio import partial_files
from lightning_deeplab.runs.folder import LOCK_NAME
from mounts import same_filesystem, tmpfs
from tiny_run import deeplab, tiny_args

QUICK = ("--model.eval_crf", "false", "--trainer.limit_val_batches", "1", "--checkpoint_every_n_steps", "1")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("synthetic"))


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180.0, every: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) first:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(every)


def saved_step(path: Path) -> int:
    read_checkpoint(str(path))  # whole and readable, as `--ckpt_path` reads it
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.slow
@pytest.mark.parametrize("other_filesystem", [True, False], ids=["run-on-another-filesystem", "run-beside-tmpdir"])
def test_kills_during_writes_and_at_random_never_damage_last_checkpoint(data_root, tmp_path, other_filesystem):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    disk = tmpfs(tmp_path / "disk", "1g") if other_filesystem else contextlib.nullcontext(tmp_path)
    with disk as base:
        run = base / "run"
        checkpoints, last = run / "checkpoints", run / "checkpoints" / "last.ckpt"
        assert same_filesystem(base, tmpdir) != other_filesystem
        args = tiny_args(data_root, str(run), *QUICK, "--trainer.logger", "false")
        step, killed_in_write, rng = -1, 0, random.Random(0)
        for when in ("during a write", "at a random moment", "during a write"):
            resume = ["--ckpt_path", "last"] if last.exists() else []
            proc = deeplab("fit", *args, "--trainer.max_steps", "100000", *resume, env={"TMPDIR": str(tmpdir)})
            started = time.time()
            if when == "during a write":
                wait_for(lambda: last.exists() and last.stat().st_mtime > started and partial_files(checkpoints), proc)
            else:
                wait_for(lambda: last.exists() and last.stat().st_mtime > started, proc, every=0.05)
                time.sleep(rng.uniform(0.0, 1.5))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_in_write += bool(partial_files(checkpoints))
            saved = saved_step(last)  # the previous complete checkpoint, never a truncated one
            assert saved >= step
            step = saved
            large = [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 2**20]
            assert large == [], f"checkpoint data left in $TMPDIR: {large}"
        assert killed_in_write >= 1
        proc = deeplab(
            "fit", *args, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last", env={"TMPDIR": str(tmpdir)}
        )
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-3000:]
        assert "ended without releasing it; taking it over" in output
        assert saved_step(last) == step + 2
        assert partial_files(checkpoints) == [] and partial_files(run) == []


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_stops_with_one_line(data_root, tmp_path):
    with tmpfs(tmp_path / "disk", "150m") as disk:
        run = disk / "run"
        last = run / "checkpoints" / "last.ckpt"
        # a checkpoint of this network is ~90 MB: the first fits, then the disk is filled up
        proc = deeplab("fit", *tiny_args(data_root, str(run), *QUICK), "--trainer.max_steps", "100000")
        wait_for(last.exists, proc, every=0.05)
        saved = saved_step(last)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=1M"], capture_output=True)
        filled = time.monotonic()
        output = proc.communicate(timeout=300)[0]
        assert time.monotonic() - filled < 60  # stopped within seconds, the logger included
        assert proc.returncode == 2, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(last) in errors[0] and "the disk is full" in errors[0], output[-3000:]
        assert "Traceback" not in output and "Logging error" not in output, output[-3000:]
        assert saved_step(last) >= saved
        assert partial_files(last.parent) == []


@pytest.mark.slow
def test_two_fits_into_one_folder(data_root, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, str(run), *QUICK, "--trainer.logger", "false")
    first = deeplab("fit", *args, "--trainer.max_steps", "100000")
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").exists(), first, every=0.05)
    for resume in ([], ["--ckpt_path", "last"]):
        second = deeplab("fit", *args, "--trainer.max_steps", "3", *resume)
        output = second.communicate(timeout=300)[0]
        assert second.returncode == 2, output[-3000:]
        assert f"error: --trainer.default_root_dir {run}: another fit is running in this folder" in output
        assert f"pid {first.pid}," in output
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # the killed run's folder: a new run is refused, the resume takes the folder over
    fresh = deeplab("fit", *args, "--trainer.max_steps", "3")
    output = fresh.communicate(timeout=300)[0]
    assert fresh.returncode == 2 and "holds the checkpoints of an earlier run" in output, output[-3000:]
    step = saved_step(run / "checkpoints" / "last.ckpt")
    resumed = deeplab("fit", *args, "--trainer.max_steps", str(step + 1), "--ckpt_path", "last")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert f"pid {first.pid}" in output and "taking it over" in output
    assert (run / LOCK_NAME).read_text() == ""  # released at the end


DAMAGED = {
    "empty": lambda whole: b"",
    "truncated": lambda whole: whole[: len(whole) // 3],
    "not a checkpoint": lambda whole: b"epoch,loss\n1,0.5\n",
}


@pytest.fixture(scope="module")
def good_checkpoint(data_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    assert (
        main(["fit", *tiny_args(data_root, str(run), *QUICK, "--trainer.logger", "false", "--trainer.max_steps", "1")])
        == 0
    )
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGED))
@pytest.mark.parametrize("command", ["validate", "predict", "fit", "crf-search"])
def test_a_damaged_checkpoint_is_one_error_line_naming_the_file(
    data_root, tmp_path, good_checkpoint, capsys, command, damage
):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(DAMAGED[damage](good_checkpoint.read_bytes()))
    args = tiny_args(data_root, str(tmp_path / "run"), "--trainer.logger", "false", "--model.eval_crf", "false")
    if command == "crf-search":
        args = [arg for arg in args if arg not in ("--trainer.default_root_dir", str(tmp_path / "run"))]
    capsys.readouterr()
    assert main([command, *args, "--ckpt_path", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --ckpt_path {bad}: ")
    assert {"empty": "is empty", "truncated": "truncated or damaged", "not a checkpoint": "not a checkpoint"}[
        damage
    ] in err[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_slurm_launch_that_does_not_match_the_devices_is_refused(data_root, tmp_path):
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "1",
        "SLURM_NODELIST": "localhost",
    }
    proc = deeplab("fit", *tiny_args(data_root, str(tmp_path / "run"), *QUICK, "--trainer.devices", "1"), env=slurm)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, output[-3000:]
    assert "error: SLURM starts 2 task(s) per node on 1 node(s), but the run expects --trainer.devices 1" in output
