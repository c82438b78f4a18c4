"""Initial weights for DeepLabV2: torchvision ImageNet weights or a local checkpoint."""

import os
import pickle
import socket
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor, nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    VGG16_Weights,
)

from .vgg import decimate_vgg_classifier

#: The torchvision weights ``pretrained="imagenet"`` loads for each backbone (the classic
#: ImageNet-1k recipes, which the DeepLab literature started from).
IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
    "vgg16": VGG16_Weights.IMAGENET1K_V1,
}

#: Seconds a socket operation may block while fetching weights, so an unreachable host fails
#: instead of hanging.
DOWNLOAD_SOCKET_TIMEOUT_S = 20.0

#: Keys of torchvision's ImageNet classifiers: present in their state dicts, absent from the
#: backbones (VGG's fc6/fc7 are taken from ``classifier.*`` separately).
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "fc6.", "fc7.")  # fc6/fc7: DeepLab's, from converted Caffe VGG nets

_BN_COUNTER = "num_batches_tracked"  # absent from FrozenBatchNorm2d, never worth reporting
_MAX_LISTED = 8


def imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``backbone``, from the torch hub cache or downloaded.

    Raises RuntimeError naming the weights when they are not cached and cannot be downloaded.
    """
    weights = IMAGENET_WEIGHTS[backbone]
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise RuntimeError(
            f"cannot load ImageNet weights {weights} for {backbone}: they are not in the torch hub "
            f"cache ({cache}) and no download is possible ({error}). Copy {weights.url} to that "
            f"path, or pass pretrained=<local checkpoint path>."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def read_checkpoint(path: "str | os.PathLike[str]") -> dict[str, Tensor]:
    """The state dict stored at ``path``: a plain state dict, or the ``state_dict`` of a Lightning .ckpt."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints may pickle hyper-parameter objects; the user named this file.
        warnings.warn(f"{path} holds more than tensors; loading it with full unpickling", stacklevel=3)
        content = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in content.items()
    ):
        raise ValueError(
            f"pretrained checkpoint {str(path)!r} is not a state dict (a mapping of names to tensors) "
            f"nor a Lightning checkpoint with one under 'state_dict'"
        )
    return dict(content)


def load_into(model: nn.Module, backbone: nn.Module, state: Mapping[str, Tensor], source: str) -> list[str]:
    """Load ``state`` into the whole ``model`` or into its ``backbone``, whichever its keys fit.

    A common key prefix (``model.`` of a LightningModule, ``module.`` of DDP) is found and
    stripped; keys outside that prefix are ignored (other parts of a LightningModule). Raises
    ValueError when no key fits, when a key the target needs is missing, when a key under the
    prefix is unknown, or when a shape differs. Returns the checkpoint keys left unused
    (classifier layers of torchvision's ImageNet models) for the caller to use or drop.
    """
    targets = {"model": model.state_dict(), "backbone": backbone.state_dict()}
    target, prefix, matched = max(
        ((name, *_best_prefix(state, keys)) for name, keys in targets.items()),
        key=lambda found: found[2],  # max() keeps the first on ties: the whole model
    )
    if matched == 0:
        raise ValueError(
            f"no key of {source} matches the model or its backbone; checkpoint keys start with "
            f"{_listing(state)}, the model expects e.g. {_listing(targets['model'])}"
        )
    expected = targets[target]
    stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in stripped and not k.endswith(_BN_COUNTER)]
    unknown = [k for k in stripped if k not in expected and not k.endswith(_BN_COUNTER)]
    unused = [k for k in unknown if target == "backbone" and k.startswith(CLASSIFIER_PREFIXES)]
    unknown = [k for k in unknown if k not in unused]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in stripped.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    where = f"the {target}" + (f" (checkpoint prefix {prefix!r} stripped)" if prefix else "")
    if missing:
        problems.append(f"{len(missing)} keys of {where} are missing: {_listing(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} checkpoint keys are unknown to {where}: {_listing(unknown)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ: {_listing(mismatched)}")
    if problems:
        raise ValueError(f"cannot load {source}: " + "; ".join(problems))
    module = model if target == "model" else backbone
    usable = {k: v for k, v in stripped.items() if k in expected}
    module.load_state_dict(usable, strict=False)  # checked above; strict would trip on BN counters
    return [k for k in stripped if k in unused]


def vgg_fc_weights(state: Mapping[str, Tensor], unused: Iterable[str]) -> "dict[str, Tensor] | None":
    """fc6/fc7 weights: DeepLab's own (``fc6.*``, ``fc7.*``, as a converted Caffe VGG init model holds
    them), or decimated from torchvision's VGG classifier when ``unused`` holds it; else None."""
    deeplab = {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    if deeplab <= set(unused):
        return {k: state[k] for k in deeplab}
    needed = {"classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"}
    if not needed <= set(unused):
        return None
    return decimate_vgg_classifier({k: state[k] for k in needed})


def _best_prefix(state: Mapping[str, Tensor], target_keys: Iterable[str]) -> tuple[str, int]:
    """The key prefix (ending with '.', or '') whose removal makes most keys of ``state`` fit."""
    target_keys = set(target_keys)
    counts: dict[str, int] = {}
    for key in state:
        cut = 0
        while True:
            if key[cut:] in target_keys:
                counts[key[:cut]] = counts.get(key[:cut], 0) + 1
            cut = key.find(".", cut) + 1
            if cut == 0:
                break
    if not counts:
        return "", 0
    prefix = max(counts, key=lambda p: (counts[p], -len(p)))
    return prefix, counts[prefix]


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
