"""Training through the dense CRF (CRF-as-RNN): gradients, padding, the optimiser group,
checkpoints, options, and the second stage through the `deeplab` command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_deeplab.commands.cli import DeepLabCLI
from lightning_deeplab.commands.main import main as deeplab
from lightning_deeplab.constants import IGNORE_INDEX, PAD_VALUE
from lightning_deeplab.crf import DenseCRF, dense_crf, unary_from_logits, unary_from_softmax
from lightning_deeplab.training import CRFTraining
from lightning_deeplab.training.crf_loss import crf_cross_entropy, unpadded_boxes
from lightning_deeplab.data import build_train_transform
from lightning_deeplab.data.synthetic import render_sample
from lightning_deeplab.data.transforms import seed_transform
from lightning_deeplab.models import DeepLabV2
from lightning_deeplab.training.module import DeepLabV2Module
from lightning_deeplab.callbacks.reporting import LearnedCRFLog
from tiny_run import REPO, tiny_args

NUM_CLASSES = 4
LEARNED = {"pos_w", "bi_w", "compatibility"}


def crf_module(crf: DenseCRF | None = None, msc_scales=None, **kwargs) -> DeepLabV2Module:
    torch.manual_seed(0)
    model = DeepLabV2("resnet18", "aspp-s", NUM_CLASSES, msc_scales=msc_scales, style="pytorch", norm="bn")
    if crf is None:
        crf = DenseCRF(iterations=3, compatibility="potts", trainable=True)
    kwargs.setdefault("crf_training", CRFTraining())
    return DeepLabV2Module(model, crf, **kwargs)


def optimizer_of(module: DeepLabV2Module, max_steps: int = 10) -> torch.optim.Optimizer:
    """The optimiser a fit builds for ``module``."""
    return fit_no_batch(module, max_steps).optimizers[0]


def fit_no_batch(module: DeepLabV2Module, max_steps: int = 10) -> pl.Trainer:
    """A fit of no batch (configure_optimizers runs, nothing trains)."""
    trainer = pl.Trainer(
        max_steps=max_steps,
        limit_train_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batch = synthetic_batch(batch=1, size=(16, 16))
    trainer.fit(module, DataLoader([{"image": batch["image"][0], "mask": batch["mask"][0]}]))
    return trainer


def synthetic_batch(batch=4, size=(48, 64), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    images, masks = zip(*(render_sample(size, rng) for _ in range(batch)))
    masks = [np.where(m == IGNORE_INDEX, m, m % NUM_CLASSES) for m in masks]  # 4 of the 6 classes
    return {
        "image": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(),
        "mask": torch.from_numpy(np.stack(masks)).long(),
    }


def pad_bottom_right(image, mask, rows, cols):
    """The padding the training transform adds: PAD_VALUE, ignore label."""
    b, _, h, w = image.shape
    out_image = torch.full((b, 3, h + rows, w + cols), PAD_VALUE)
    out_mask = torch.full((b, h + rows, w + cols), IGNORE_INDEX, dtype=torch.long)
    out_image[:, :, :h, :w], out_mask[:, :h, :w] = image, mask
    return out_image, out_mask


def crf_loss_of(module: DeepLabV2Module, batch: dict) -> torch.Tensor:
    outputs = module.model.forward_multi(batch["image"])
    return module.crf_training.losses(module.crf, outputs, ["fused"], batch["image"], batch["mask"])["crf_fused"]


# ------------------------------------------------------------------------------- gradients
class LossOf(nn.Module):
    """crf_cross_entropy as a module, so gradcheck can swap the CRF's parameters."""

    def __init__(self, crf, image, mask):
        super().__init__()
        self.crf, self.image, self.mask = crf, image, mask

    def forward(self, logits):
        return crf_cross_entropy(self.crf, logits, self.image, self.mask)


def test_gradcheck_of_the_crf_loss_in_float64():
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 6, 7), generator=gen).float()
    mask = torch.randint(0, 3, (2, 6, 7), generator=gen)
    mask[0, 0, :3] = IGNORE_INDEX
    image, mask = pad_bottom_right(image, mask, 1, 2)
    image[1, :, 5:, :], mask[1, 5:, :] = PAD_VALUE, IGNORE_INDEX  # sample 1 padded more: per-sample calls
    crf = DenseCRF(iterations=3, bi_xy_std=5.0, bi_rgb_std=20.0, compatibility="potts", num_classes=3, trainable=True)
    loss = LossOf(crf.double(), image, mask)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in loss.named_parameters()}
    assert set(params) == {f"crf.{name}" for name in LEARNED}
    names = list(params)

    def run(logits, *values):
        return torch.func.functional_call(loss, dict(zip(names, values)), (logits,))

    assert torch.autograd.gradcheck(run, (logits, *params.values()), fast_mode=True)


def test_gradients_reach_the_backbone_and_the_crf_parameters():
    module = crf_module()
    crf_loss_of(module, synthetic_batch(batch=2)).backward()
    first_conv = next(p for name, p in module.model.named_parameters() if "backbone" in name)
    for param in [first_conv, module.crf.pos_w, module.crf.bi_w, module.crf.compatibility]:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_a_few_steps_lower_the_crf_loss_and_move_the_crf_weights():
    # weak kernels: from a random network, strong ones collapse the marginals onto one label
    crf = DenseCRF(iterations=3, pos_w=0.5, bi_w=0.5, compatibility="potts", trainable=True)
    module = crf_module(crf, lr=1e-3, crf_training=CRFTraining(lr_mult=10.0))
    optimizer = optimizer_of(module, max_steps=100)
    batch = synthetic_batch(batch=2, size=(32, 32))
    start = [p.detach().clone() for p in module.crf.parameters()]
    seen = []
    for _ in range(5):
        loss = crf_loss_of(module, batch)
        seen.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert min(seen[1:]) < 0.8 * seen[0]
    assert all(not torch.equal(p.detach(), p0) for p, p0 in zip(module.crf.parameters(), start))


def test_fewer_iterations_in_training():
    batch = synthetic_batch(batch=1, size=(20, 24))
    logits = torch.randn(1, NUM_CLASSES, 20, 24)
    five = DenseCRF(iterations=5)
    two = crf_cross_entropy(five, logits, batch["image"], batch["mask"], iterations=2)
    assert two == crf_cross_entropy(DenseCRF(iterations=2), logits, batch["image"], batch["mask"])
    assert two != crf_cross_entropy(five, logits, batch["image"], batch["mask"])
    module = crf_module(DenseCRF(iterations=5), crf_training=CRFTraining(iterations=2))
    assert module.crf_training.iterations == 2 and module.crf.iterations == 5


def test_per_scale_crf_losses_and_their_weight():
    module = crf_module(
        DenseCRF(iterations=2), msc_scales=(1.0, 0.5), crf_training=CRFTraining(weight=0.5, per_scale=True)
    )
    batch = synthetic_batch(batch=1, size=(32, 32))
    with torch.no_grad():
        outputs = module.model.forward_multi(batch["image"])
        names = list(module.training_losses(outputs, batch["mask"]))
        losses = module.crf_training.losses(module.crf, outputs, names, batch["image"], batch["mask"])
        assert list(losses) == ["crf_scale1", "crf_scale0.5", "crf_fused"]
        for logits, value in zip(outputs, losses.values()):
            assert value == 0.5 * crf_cross_entropy(module.crf, logits, batch["image"], batch["mask"])


# -------------------------------------------------------------------------------- padding
def test_padding_does_not_leak_into_the_image():
    batch = synthetic_batch(batch=2, size=(30, 40))
    logits = torch.randn(2, NUM_CLASSES, 30, 40)
    crf = DenseCRF(iterations=5, pos_xy_std=3.0, bi_w=10.0, bi_xy_std=30.0, bi_rgb_std=40.0)
    image, mask = pad_bottom_right(batch["image"], batch["mask"], 12, 9)
    # padding whose logits would pull every pixel to class 0 if it took part in the CRF
    padded_logits = torch.full((2, NUM_CLASSES, 42, 49), -20.0)
    padded_logits[:, 0] = 20.0
    padded_logits[:, :, :30, :40] = logits
    padded_logits.requires_grad_(True)
    loss = crf_cross_entropy(crf, padded_logits, image, mask)
    assert loss == crf_cross_entropy(crf, logits, batch["image"], batch["mask"])
    loss.backward()
    assert padded_logits.grad[:, :, 30:].abs().max() == 0 and padded_logits.grad[:, :, :, 40:].abs().max() == 0
    # the test has teeth: a CRF over the whole padded crop is pulled by the padding
    naive = dense_crf(
        unary_from_logits(padded_logits.detach()),
        image.round().clamp(0, 255).to(torch.uint8),
        iterations=5,
        pos_xy_std=3.0,
        bi_w=10.0,
        bi_xy_std=30.0,
        bi_rgb_std=40.0,
    )
    naive_loss = F.nll_loss(torch.log(naive), mask, ignore_index=IGNORE_INDEX)
    assert not torch.isclose(naive_loss, loss.detach(), rtol=1e-3)


def test_samples_padded_differently_equal_their_own_runs():
    batch = synthetic_batch(batch=2, size=(30, 40))
    image, mask = batch["image"].clone(), batch["mask"].clone()
    image[1, :, :, 25:], mask[1, :, 25:] = PAD_VALUE, IGNORE_INDEX  # right padding
    image[0, :, :, :6], mask[0, :, :6] = PAD_VALUE, IGNORE_INDEX  # left padding (a flipped crop)
    logits = torch.randn(2, NUM_CLASSES, 30, 40)
    crf = DenseCRF(iterations=3)
    loss = crf_cross_entropy(crf, logits, image, mask)

    def summed(b, cols):
        target = mask[b : b + 1, :, cols]
        q = crf(unary_from_logits(logits[b : b + 1, :, :, cols]), image[b : b + 1, :, :, cols].round().byte())
        return F.nll_loss(torch.log(q), target, ignore_index=IGNORE_INDEX, reduction="sum"), (target != 255).sum()

    (s0, n0), (s1, n1) = summed(0, slice(6, 40)), summed(1, slice(0, 25))
    torch.testing.assert_close(loss, (s0 + s1) / (n0 + n1))


def test_unpadded_box_of_the_training_transform_output():
    transform = build_train_transform(64, scale_range=(1.0, 1.0), hflip=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3)).astype(np.float32)
    mask = np.ones((40, 30), np.uint8)
    mask[:5] = IGNORE_INDEX  # an ignore border in the image: not padding
    flips = set()
    for seed in range(8):
        seed_transform(transform, seed)
        out = transform(image=image, mask=mask)
        flipped = bool(out["image"][0, 0, 0] != image[0, 0, 0])
        flips.add(flipped)
        assert unpadded_boxes(torch.from_numpy(out["image"]).permute(2, 0, 1)[None]) == [
            (0, 40, 34, 64) if flipped else (0, 40, 0, 30)
        ]
    assert flips == {True, False}
    assert unpadded_boxes(torch.full((1, 3, 4, 4), PAD_VALUE)) == [None]
    black = torch.zeros(1, 3, 4, 4)
    black[:, :2] = PAD_VALUE  # a pixel is padding only when all its channels are
    assert unpadded_boxes(black) == [(0, 4, 0, 4)]


# ------------------------------------------------------------------- optimiser and options
def test_crf_parameters_get_their_own_group():
    module = crf_module(lr=1e-3, crf_training=CRFTraining(lr_mult=100.0))
    groups = {g["name"]: g for g in optimizer_of(module).param_groups}
    assert set(groups) == {"backbone", "head_weight", "head_bias", "crf"}
    assert groups["crf"]["lr"] == pytest.approx(0.1) and groups["crf"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["crf"]["params"]} == {id(p) for p in module.crf.parameters()}
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in module.parameters() if p.requires_grad}


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="crf_training.weight"):
        CRFTraining(weight=-1.0)
    with pytest.raises(ValueError, match="crf_training.lr_mult"):
        CRFTraining(lr_mult=float("nan"))
    with pytest.raises(ValueError, match="crf_training.iterations"):
        CRFTraining(iterations=0)
    with pytest.raises(TypeError, match="crf_training.per_scale"):
        CRFTraining(per_scale="yes")
    with pytest.raises(TypeError, match="crf_training must be a CRFTraining"):
        crf_module(crf_training={"weight": 1.0})
    with pytest.raises(ValueError, match="compatibility is \\(2, 2\\) but there are 4 classes"):
        crf_module(DenseCRF(compatibility=[[1.0, 0.0], [0.0, 1.0]]))
    module = crf_module(crf_training=None)  # a trainable CRF that nothing trains
    with pytest.raises(ValueError, match="crf_training is not set"):
        optimizer_of(module)


def test_without_crf_training_the_training_step_is_unchanged(monkeypatch):
    module = crf_module(DenseCRF(), crf_training=None)
    assert module.crf_training is None and list(module.crf.parameters()) == []
    assert [g["name"] for g in optimizer_of(module).param_groups] == ["backbone", "head_weight", "head_bias"]
    monkeypatch.setattr(DenseCRF, "forward", lambda *args, **kwargs: pytest.fail("the CRF ran in training"))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    batch = synthetic_batch(batch=2)
    loss = module.training_step(batch, 0)
    expected = sum(module.training_losses(module.model.forward_multi(batch["image"]), batch["mask"]).values())
    assert torch.equal(loss, expected)


# ---------------------------------------------------------------------------- checkpoints
def test_learned_crf_weights_survive_the_checkpoint_and_are_used_in_evaluation(tmp_path):
    module = crf_module(lr=0.01, crf_training=CRFTraining(lr_mult=10.0))
    batch = synthetic_batch(batch=2, size=(32, 32))
    loader = DataLoader([{"image": batch["image"][i], "mask": batch["mask"][i]} for i in range(2)], batch_size=2)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[LearnedCRFLog()],
    )
    trainer.fit(module, loader)
    learned = {name: p.detach().clone() for name, p in module.crf.named_parameters()}
    # the weights as they were logged after the last step
    assert float(trainer.logged_metrics["crf/pos_w"]) == float(learned["pos_w"])
    assert float(trainer.logged_metrics["crf/compatibility_diagonal"]) == pytest.approx(
        float(learned["compatibility"].diagonal().mean())
    )
    assert float(learned["pos_w"]) != 3.0 and not torch.equal(learned["compatibility"], torch.eye(NUM_CLASSES))
    path = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["state_dict"]
    assert {k for k in saved if k.startswith("crf.")} == {f"crf.{name}" for name in LEARNED}

    # rebuilt from the checkpoint alone: the CRF it was built with, and what it learned
    alone = DeepLabV2Module.load_from_checkpoint(path)
    assert alone.crf.trainable and alone.crf.iterations == 3
    assert alone.crf_training == CRFTraining(lr_mult=10.0)  # kept as plain values, rebuilt whole
    for name, value in learned.items():
        assert torch.equal(getattr(alone.crf, name).detach(), value)
    # the fixed settings from the (new) configuration, the learned ones from the checkpoint
    configured = DenseCRF(iterations=4, bi_xy_std=20.0, compatibility="potts", trainable=True)
    loaded = DeepLabV2Module.load_from_checkpoint(path, crf=configured)
    assert loaded.crf.iterations == 4 and loaded.crf.bi_xy_std == 20.0
    for name, value in learned.items():
        assert torch.equal(getattr(loaded.crf, name).detach(), value)
    probs = torch.softmax(torch.randn(1, NUM_CLASSES, 32, 32), 1)
    image = batch["image"][:1]
    with torch.no_grad():
        refined = loaded.refine_probabilities(probs, image)
    expected = dense_crf(
        unary_from_softmax(probs),
        image.round().byte(),
        iterations=4,
        bi_xy_std=20.0,
        pos_w=learned["pos_w"],
        bi_w=learned["bi_w"],
        compatibility=learned["compatibility"],
    )
    torch.testing.assert_close(refined, expected)

    # a configuration that learns nothing uses its own values, and says the learned ones are unused
    with pytest.warns(UserWarning, match="crf.pos_w"):
        fixed = DeepLabV2Module.load_from_checkpoint(path, crf=DenseCRF(pos_w=3.0), crf_training=None)
    assert float(fixed.crf.pos_w) == 3.0 and list(fixed.crf.parameters()) == []


def test_a_first_stage_checkpoint_starts_a_trainable_crf_at_its_configured_values(tmp_path):
    first = crf_module(DenseCRF(), crf_training=None)
    path = tmp_path / "stage1.ckpt"
    fit_no_batch(first).save_checkpoint(path)
    assert not any(k.startswith("crf.") for k in torch.load(path, weights_only=False)["state_dict"])
    second = DeepLabV2Module.load_from_checkpoint(
        path, crf=DenseCRF(pos_w=2.0, compatibility="potts", trainable=True), crf_training=CRFTraining()
    )
    assert float(second.crf.pos_w) == 2.0 and torch.equal(second.crf.compatibility, torch.eye(NUM_CLASSES))


# ------------------------------------------------------------------ through the command line
@pytest.mark.slow
def test_second_stage_from_the_command_line(tmp_path):
    data_root, first, second = str(tmp_path / "data"), str(tmp_path / "first"), str(tmp_path / "second")
    off = ("--trainer.logger", "false", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")
    DeepLabCLI(args=["fit", *tiny_args(data_root, first, *off)])
    stage2 = tiny_args(data_root, second, *off, "--model.crf_training.iterations", "2")
    at = stage2.index("--config") + 2  # the demo's config, then the overlays of its second stage
    stage2[at:at] = [
        "--config",
        str(REPO / "configs" / "crfrnn.yaml"),
        "--config",
        str(REPO / "configs" / "synthetic_crfrnn.yaml"),
    ]
    pretrained = os.path.join(first, "checkpoints", "last.ckpt")
    DeepLabCLI(args=["fit", *stage2, "--model.pretrained", pretrained])
    last = torch.load(os.path.join(second, "checkpoints", "last.ckpt"), weights_only=False)
    assert {k for k in last["state_dict"] if k.startswith("crf.")} == {f"crf.{name}" for name in LEARNED}
    learned_pos_w = float(last["state_dict"]["crf.pos_w"])
    assert learned_pos_w != 3.0  # configs/synthetic.yaml starts it at 3
    # validate the checkpoint with its own configuration: the learned CRF is what it reports
    DeepLabCLI(args=["validate", *stage2, "--ckpt_path", "last"])
    scores = sorted(p for p in os.listdir(os.path.join(second, "checkpoints")) if p.endswith("val-scores.json"))
    with open(os.path.join(second, "checkpoints", scores[-1])) as f:
        report = json.load(f)
    assert report["crf"]["pos_w"] == pytest.approx(learned_pos_w)
    assert len(report["crf"]["compatibility"]) == 6 and report["crf"]["iterations"] == 10
    # the grid search starts from the learned CRF
    search = os.path.join(str(tmp_path), "search.json")
    grid = ["--bi_w", "5", "--bi_xy_std", "30", "--bi_rgb_std", "13", "--num_images", "2", "--device", "cpu"]
    assert deeplab(["crf-search", *stage2, "--ckpt_path", "last", *grid, "--output", search]) == 0
    with open(search) as f:
        assert json.load(f)["crf"]["pos_w"] == pytest.approx(learned_pos_w)
