"""Cost of training through the dense CRF (CRF-as-RNN, ``model.crf_training``): the memory autograd
keeps for the CRF term per image, and a training step of the LightningModule with and without
that term, in one run on the same inputs.

    python benchmarks/crf_training.py                                  # ResNet-101 + ASPP-L, 321x321, 10 iterations
    python benchmarks/crf_training.py --backbone resnet18 --head aspp-s --steps 2

Memory: the bytes of the distinct storages autograd saves for the backward inside the CRF loss,
per image (the mean-field backward keeps a few marginal-sized tensors per iteration, so this
grows linearly with the iterations). Speed: median wall time of a whole training step (forward,
loss, backward) without and with ``crf_training``, with a trainable Potts-initialised CRF; on a
GPU the times are synchronised. Report the ratio; absolute times only on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lightning_deeplab.crf import DenseCRF
from lightning_deeplab.training import CRFTraining
from lightning_deeplab.training.crf_loss import crf_cross_entropy
from lightning_deeplab.models import DeepLabV2
from lightning_deeplab.training.module import DeepLabV2Module


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def inputs(args, device):
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(args.batch, 3, args.crop, args.crop, generator=gen) * 255).round().to(device)
    mask = torch.randint(0, args.classes, (args.batch, args.crop, args.crop), generator=gen).to(device)
    return image, mask


def trainable_crf(args) -> DenseCRF:
    return DenseCRF(iterations=args.iterations, compatibility="potts", num_classes=args.classes, trainable=True)


def crf_memory(args, device, model) -> dict:
    image, mask = inputs(args, device)
    side = (args.crop - 1) // 8 + 1
    logits = torch.randn(args.batch, args.classes, side, side, device=device, requires_grad=True)
    crf = trainable_crf(args).to(device)
    total = saved_bytes(lambda: crf_cross_entropy(crf, logits, image, mask))
    marginal = args.crop * args.crop * args.classes * 4
    return {
        "crf_saved_MiB_per_image": total / args.batch / 2**20,
        "marginal_MiB": marginal / 2**20,
        "saved_marginals_per_iteration": total / args.batch / marginal / args.iterations,
    }


def step_time(args, device, train_with_crf: bool) -> float:
    torch.manual_seed(0)
    model = DeepLabV2(args.backbone, args.head, args.classes, msc_scales=None, style="pytorch", norm="frozen")
    crf = trainable_crf(args) if train_with_crf else DenseCRF(iterations=args.iterations)
    module = DeepLabV2Module(model, crf, crf_training=CRFTraining() if train_with_crf else None).to(device)
    module.log = lambda *a, **k: None  # no trainer to log to
    image, mask = inputs(args, device)
    batch = {"image": image, "mask": mask}
    times = []
    for step in range(args.warmup + args.steps):
        module.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        module.training_step(batch, step).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--head", default="aspp-l")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = DeepLabV2(args.backbone, args.head, args.classes, msc_scales=None, style="pytorch", norm="frozen")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": str(device),
        "torch": torch.__version__,
        **vars(args),
    }
    result.update(crf_memory(args, device, model))
    # alternate the two, so load from other jobs hits both alike
    without, with_crf = [], []
    for _ in range(2):
        without.append(step_time(args, device, train_with_crf=False))
        with_crf.append(step_time(args, device, train_with_crf=True))
    result.update(
        {"step_s_without_crf": min(without), "step_s_with_crf": min(with_crf), "ratio": min(with_crf) / min(without)}
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
