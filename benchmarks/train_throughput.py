"""Training and inference throughput of DeepLab v2: a plain fp32 eager baseline against the
fast path (bf16 autocast, channels_last, torch.compile, fused SGD, cudnn.benchmark), in one run on
the same synthetic tensors, through the LightningModule's own loss.

    python benchmarks/train_throughput.py                      # the paper's setting on a GPU
    python benchmarks/train_throughput.py --device cpu --backbone resnet18 --crop 129 --batch 2 --steps 3 --warmup 1

Prints images/s of each mode, their ratio, FLOPs per training image (torch.utils.flop_counter),
the achieved fraction of the GPU's bf16 dense peak (MFU), and peak memory; then inference at 513x513
(whole image with the network's MSC fusion; + flip) with and without the dense CRF.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_deeplab.models import DeepLabV2
from lightning_deeplab.training.module import DeepLabV2Module

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; override with --peak-tflops.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK_TFLOPS.items():  # the most specific key comes first
        if key in name:
            return value
    return None


def make_module(args, num_classes: int) -> DeepLabV2Module:
    network = DeepLabV2(
        backbone=args.backbone,
        head=args.head,
        num_classes=num_classes,
        msc_scales=None if args.no_msc else (1.0, 0.75, 0.5),
        norm="frozen",
    )
    return DeepLabV2Module(network, eval_crf=False)


def synthetic_batch(args, num_classes: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(args.batch, 3, args.crop, args.crop, generator=g) * 255
    mask = torch.randint(0, num_classes, (args.batch, args.crop, args.crop), generator=g)
    return {"image": image.to(device), "mask": mask.to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_flops_per_image(module: DeepLabV2Module, batch: dict) -> float:
    """FLOPs of one forward + backward of the training loss, per image (convolutions and matmuls)."""
    counter = FlopCounterMode(display=False)
    with counter:
        losses = module.training_losses(module.model.forward_multi(batch["image"]), batch["mask"])
        sum(losses.values()).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["image"].shape[0]


def time_training(module, batch, device, steps, warmup, fast: bool) -> dict:
    model = module.model
    groups = model.parameter_groups()
    params = [{"params": p} for p in groups.values() if p]
    optimizer = torch.optim.SGD(
        params, lr=1e-6, momentum=0.9, weight_decay=5e-4, **({"fused": True} if fast and device.type == "cuda" else {})
    )
    image, mask = batch["image"], batch["mask"]
    forward = model.forward_multi
    if fast:
        model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
        if device.type == "cuda":
            forward = torch.compile(model.forward_multi)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        with autocast:
            outputs = forward(image)
        loss = sum(module.training_losses(outputs, mask).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    model.to(memory_format=torch.contiguous_format)
    median = statistics.median(times)
    return {
        "images_per_s": image.shape[0] / median,
        "median_step_s": median,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": float(loss.detach()),
    }


@torch.no_grad()
def time_inference(module, device, size: int, steps: int, warmup: int, flip: bool, crf: bool, fast: bool) -> float:
    """Images/s of whole-image evaluation (the model's own MSC fusion, optionally + flip) through
    the evaluation code the module uses, with or without the dense CRF."""
    from lightning_deeplab.crf import DenseCRF, unary_from_softmax
    from lightning_deeplab.evaluation.inference import InferenceConfig, infer_probabilities

    model = module.model.eval()
    image = torch.rand(1, 3, size, size, device=device) * 255
    config = InferenceConfig(mode="whole", flip=flip)
    dense_crf = DenseCRF().to(device) if crf else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if fast else contextlib.nullcontext()

    def infer():
        with autocast:
            probs = infer_probabilities(model, image, config)
        if dense_crf is not None:
            probs = dense_crf(unary_from_softmax(probs), image.round().to(torch.uint8))
        return probs.argmax(1)

    times = []
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        infer()
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    model.train()
    return 1.0 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--head", default="aspp-l")
    parser.add_argument("--no-msc", action="store_true", help="train without multi-scale inputs")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--eval-size", type=int, default=513)
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    module = make_module(args, args.classes).to(device)
    batch = synthetic_batch(args, args.classes, device)
    flops = training_flops_per_image(module, batch)
    peak = args.peak_tflops or peak_tflops(device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "flops_per_image": flops,
    }
    for mode in ("fp32_eager", "fast"):
        r = time_training(module, batch, device, args.steps, args.warmup, fast=mode == "fast")
        if peak:
            r["mfu"] = flops * r["images_per_s"] / (peak * 1e12)
        results[mode] = r
    results["speedup"] = results["fast"]["images_per_s"] / results["fp32_eager"]["images_per_s"]

    print(
        f"device: {results['device']}  ({args.backbone} {args.head}, msc={not args.no_msc}, batch {args.batch}, crop {args.crop})"
    )
    print(f"training FLOPs per image: {flops / 1e9:.1f} GFLOP")
    print(f"{'mode':<12} {'img/s':>8} {'step ms':>9} {'MFU':>7} {'peak GiB':>9}")
    for mode in ("fp32_eager", "fast"):
        r = results[mode]
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"{mode:<12} {r['images_per_s']:>8.2f} {1e3 * r['median_step_s']:>9.1f} {mfu:>7} {mem:>9}")
    print(f"speed-up of the fast path: {results['speedup']:.2f}x")

    if not args.skip_inference:
        print(f"\ninference at {args.eval_size}x{args.eval_size}, images/s:")
        inference = {}
        for fast in (False, True):
            for flip in (False, True):
                for crf in (False, True):
                    key = f"{'bf16' if fast else 'fp32'} {'MSC+flip' if flip else 'MSC'}{' +CRF' if crf else ''}"
                    inference[key] = time_inference(
                        module, device, args.eval_size, max(2, args.steps // 2), 1, flip, crf, fast
                    )
                    print(f"  {key:<20} {inference[key]:8.2f}")
        results["inference_images_per_s"] = inference
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
