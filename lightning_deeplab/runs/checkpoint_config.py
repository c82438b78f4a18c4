"""What a checkpoint contributes to a run's configuration: its file (``best`` and ``last`` are
found in ``<default_root_dir>/checkpoints/``) and the network's architecture where the
configuration does not say it. Every other setting comes from the configuration as given."""

from __future__ import annotations

import glob
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any, Optional

import torch

#: The folder under the run's root where the CLI's ModelCheckpoint writes.
CHECKPOINT_DIR = "checkpoints"
#: File names of that ModelCheckpoint: the best one (``best-step<N>.ckpt``) and the last one.
BEST_PATTERN = "best-step*.ckpt"
LAST_NAME = "last.ckpt"
#: `--ckpt_path` values Lightning resolves itself (not files).
LIGHTNING_CKPT_PATHS = ("hpc", "registry")
#: Init arguments of the network that the data decides (the CLI links them), never the checkpoint.
LINKED_MODEL_ARGS = ("num_classes",)


class CheckpointConfigError(ValueError):
    """A checkpoint that cannot be found, or that contradicts the configuration."""


class MissingCheckpoint(CheckpointConfigError, FileNotFoundError):
    """A ``--ckpt_path`` that names no file."""


class DamagedCheckpoint(CheckpointConfigError):
    """A checkpoint file that is empty, truncated, damaged or not a checkpoint of this project."""


#: Where the weights of a DeepLabV2Module live in its state dict.
MODULE_STATE_PREFIX = "model."


def read_checkpoint(path: str, option: str = "--ckpt_path") -> dict[str, Any]:
    """The content of a lightning-deeplab checkpoint file, tensors memory-mapped (nothing is
    copied into memory until it is used); :class:`DamagedCheckpoint` naming ``option`` and the
    file when it is empty, truncated, damaged, not a torch.save archive, not a Lightning
    checkpoint or not one of a DeepLabV2Module."""

    def damaged(problem: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(f"{option} {path}: {problem}")

    size = os.path.getsize(path)
    if size == 0:
        raise damaged("the file is empty (0 bytes): a copy or a save that never finished")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        if zip_start:
            raise damaged(f"the file is truncated or damaged ({size} bytes, its archive has no end)")
        raise damaged(f"not a checkpoint: not an archive written by torch.save ({size} bytes)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise damaged(
            f"not a lightning-deeplab checkpoint: it holds Python objects beyond tensors and plain values ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
        raise damaged(
            f"the file is damaged ({size} bytes; torch could not read it: {str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    state = content.get("state_dict") if isinstance(content, dict) else None
    if not isinstance(state, Mapping):
        raise damaged(
            "not a Lightning checkpoint: it holds no state_dict (network weights alone, as convert-caffe "
            "writes them, are initial weights: --model.pretrained)"
        )
    if state and not any(str(key).startswith(MODULE_STATE_PREFIX) for key in state):
        raise damaged(
            f"not a lightning-deeplab checkpoint: its weights ({next(iter(state))!r}, ...) are not a DeepLabV2Module's"
        )
    return content


def resolve_ckpt_path(ckpt_path: Optional[str], root_dir: str) -> Optional[str]:
    """``ckpt_path`` as a file: ``"last"`` -> ``<root_dir>/checkpoints/last.ckpt``, ``"best"`` ->
    the best ``best-step*.ckpt`` there (by the monitored score its ModelCheckpoint state saved);
    Lightning's own ``"hpc"`` / ``"registry[:...]"`` pass through; any other value must name an
    existing file (:class:`MissingCheckpoint` when it does not)."""
    if ckpt_path is None:
        return None
    folder = os.path.join(root_dir, CHECKPOINT_DIR)
    if ckpt_path == "last":
        path = os.path.join(folder, LAST_NAME)
        if not os.path.isfile(path):
            raise CheckpointConfigError(f"--ckpt_path last: no last checkpoint, {path} does not exist")
        return path
    if ckpt_path == "best":
        candidates = sorted(glob.glob(os.path.join(glob.escape(folder), BEST_PATTERN)))
        if not candidates:
            raise CheckpointConfigError(f"--ckpt_path best: no best checkpoint, no {BEST_PATTERN} in {folder}")
        return max(candidates, key=_saved_score) if len(candidates) > 1 else candidates[0]
    if ckpt_path in LIGHTNING_CKPT_PATHS or ckpt_path.startswith("registry:"):
        return ckpt_path
    if not os.path.isfile(ckpt_path):
        raise MissingCheckpoint(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return ckpt_path


def _saved_score(path: str) -> float:
    """The monitored score the checkpoint callback (ModelCheckpoint or a subclass) saved into
    ``path`` (-inf when it holds none)."""
    callbacks = read_checkpoint(path, "--ckpt_path best").get("callbacks", {})
    for key, state in callbacks.items():
        # state keys are "<class name>{<its settings>}"
        if str(key).split("{")[0].endswith("Checkpoint") and state.get("current_score") is not None:
            score = float(state["current_score"])
            return score if math.isfinite(score) else -math.inf
    return -math.inf


def saved_model_config(checkpoint: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The ``class_path``/``init_args`` of the network a checkpoint (`read_checkpoint`'s content)
    was trained with, if saved."""
    model = (checkpoint.get("hyper_parameters") or {}).get("model")
    if isinstance(model, Mapping) and "class_path" in model:
        return {"class_path": model["class_path"], "init_args": dict(model.get("init_args") or {})}
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def merge_architecture(
    config: Any, given: Optional[Mapping[str, Any]], saved: Mapping[str, Any], ckpt_path: str, key: str = "model.model"
) -> None:
    """Complete ``config`` (the namespace of the network's ``class_path``/``init_args``) with the
    checkpoint's architecture ``saved``: every init argument the configuration did not give
    (``given``: what the YAML and the command line set) is taken from the checkpoint; a given
    one that differs is an error naming the key."""
    given = dict(given or {})
    given_class = given.get("class_path")
    if given_class is not None and _short(given_class) != _short(saved["class_path"]):
        raise CheckpointConfigError(
            f"{key}.class_path: the configuration says {given_class}, checkpoint {ckpt_path} holds a "
            f"{saved['class_path']}"
        )
    given_args = dict(given.get("init_args") or {})
    for name, value in saved["init_args"].items():
        if name in LINKED_MODEL_ARGS:
            continue
        if name in given_args and _plain(given_args[name]) != _plain(value):
            raise CheckpointConfigError(
                f"{key}.init_args.{name}: the configuration says {_plain(given_args[name])!r}, checkpoint "
                f"{ckpt_path} was trained with {_plain(value)!r} (leave it out to use the checkpoint's)"
            )
        config.init_args[name] = value


def _short(class_path: str) -> str:
    # "lightning_deeplab.models.DeepLabV2" and "lightning_deeplab.models.deeplab.DeepLabV2" are one class
    return class_path.rsplit(".", 1)[-1]
