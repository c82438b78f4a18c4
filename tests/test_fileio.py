"""Files appear whole or not at all: partial files beside the target, renamed when complete,
removed on an error; a full disk is one error naming the file, with the previous file kept."""

from __future__ import annotations

import os

import pytest
import torch

from lightning_deeplab.fileio import (
    PARTIAL_SUFFIX,
    DiskFullError,
    atomic_output,
    atomic_path,
    disk_full_code,
    partial_files,
    remove_partial_files,
    write_json,
)
from mounts import tmpfs


def test_the_file_appears_only_when_complete_and_an_error_keeps_the_previous_one(tmp_path):
    target = tmp_path / "sub" / "scores.json"
    write_json(target, {"mIoU": 1.0})
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target, "w") as handle:
            handle.write('{"mIoU": 2.')
            (partial,) = partial_files(target.parent)  # written beside the target, recognisably
            assert partial.name.startswith(".scores.json.") and partial.name.endswith(PARTIAL_SUFFIX)
            raise RuntimeError("interrupted")
    assert target.read_text() == '{\n  "mIoU": 1.0\n}\n'
    assert partial_files(target.parent) == []
    with atomic_path(target, durable=True) as path:
        path.write_text("new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_partial_files_of_a_killed_writer_are_found_and_removed(tmp_path):
    (tmp_path / ".last.ckpt.abc123.partial").write_bytes(b"half")
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    (tmp_path / "notes.partial").write_bytes(b"not ours: no leading dot")
    assert [p.name for p in remove_partial_files(tmp_path)] == [".last.ckpt.abc123.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.partial"]
    assert remove_partial_files(tmp_path / "missing") == []


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as disk:
        target = disk / "weights.pt"
        torch.save({"w": torch.zeros(10)}, target)
        before = target.read_bytes()
        with pytest.raises(DiskFullError) as full:
            with atomic_output(target) as handle:
                torch.save({"w": torch.zeros(1_000_000)}, handle)  # 4 MB into 1 MB
        assert str(target) in str(full.value) and "the disk is full" in str(full.value)
        assert target.read_bytes() == before
        assert partial_files(disk) == []


def test_a_full_disk_is_recognised_behind_the_error_torch_raises():
    # torch's archive writer reports the failed write as a RuntimeError raised while handling it
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    except RuntimeError as error:
        assert disk_full_code(error) == 28
    assert disk_full_code(RuntimeError("other")) is None
    assert disk_full_code(OSError(13, "Permission denied")) is None
