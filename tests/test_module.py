"""The LightningModule's recipe: losses, poly LR, parameter groups, evaluation with a CRF."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_deeplab.constants import IGNORE_INDEX
from lightning_deeplab.crf import DenseCRF
from lightning_deeplab.models import DeepLabV2
from lightning_deeplab.training.module import DeepLabV2Module, resize_labels
from lightning_deeplab.training.optimization import poly_lr_factor
from torch.utils.flop_counter import FlopCounterMode

from lightning_deeplab.callbacks.reporting import TrainingFlops, WandbReport

NUM_CLASSES = 4
MODEL_ARGS = ("backbone", "head", "msc_scales", "atrous_rates", "style", "norm", "num_classes")


def small_module(**kwargs) -> DeepLabV2Module:
    arch = dict(backbone="resnet18", num_classes=NUM_CLASSES, norm="bn", style="pytorch")
    arch.update({k: kwargs.pop(k) for k in MODEL_ARGS if k in kwargs})
    kwargs.setdefault("eval_crf", False)
    torch.manual_seed(0)
    return DeepLabV2Module(DeepLabV2(**arch), **kwargs)


def attach_trainer(module: DeepLabV2Module, **trainer_args) -> pl.Trainer:
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.strategy.connect(module)
    module.trainer = trainer
    return trainer


def tiny_batches(count: int) -> torch.utils.data.DataLoader:
    torch.manual_seed(1)
    samples = [
        {"image": torch.rand(3, 17, 17) * 255, "mask": torch.randint(0, NUM_CLASSES, (17, 17))} for _ in range(count)
    ]
    return torch.utils.data.DataLoader(samples, batch_size=1)


class LRRecorder(pl.Callback):
    def __init__(self) -> None:
        self.optimizers, self.lrs = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.optimizers.append(trainer.optimizers[0])
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (50, 0.5**0.9), (75, 0.25**0.9), (99, 0.01**0.9), (100, 0.0), (150, 0.0)],
)
def test_poly_factor(step, expected):
    assert poly_lr_factor(step, 100, 0.9) == pytest.approx(expected, rel=1e-12)


def test_poly_schedule_and_parameter_groups_follow_the_paper():
    module = small_module(lr=2.5e-4, weight_decay=5e-4, msc_scales=None)
    recorder = LRRecorder()
    trainer = attach_trainer(module, max_steps=20, callbacks=[recorder])
    trainer.fit(module, tiny_batches(20))
    assert trainer.lr_scheduler_configs[0].interval == "step"
    optimizer = recorder.optimizers[0]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "head_weight", "head_bias"}
    assert [groups[name]["initial_lr"] for name in ("backbone", "head_weight", "head_bias")] == pytest.approx(
        [2.5e-4, 2.5e-3, 5e-3]
    )
    assert groups["backbone"]["weight_decay"] == groups["head_weight"]["weight_decay"] == 5e-4
    assert groups["head_bias"]["weight_decay"] == 0.0
    assert optimizer.defaults["momentum"] == 0.9
    # every trainable parameter is optimised exactly once
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in module.parameters() if p.requires_grad}
    # head biases are biases, head weights are conv kernels
    assert all(p.dim() == 1 for p in groups["head_bias"]["params"])
    assert all(p.dim() == 4 for p in groups["head_weight"]["params"])

    seen = [lrs[0] for lrs in recorder.lrs]
    assert len(seen) == 20
    assert seen[0] == pytest.approx(2.5e-4)
    assert seen[5] == pytest.approx(2.5e-4 * (1 - 5 / 20) ** 0.9)
    assert recorder.lrs[10][2] == pytest.approx(5e-3 * (1 - 10 / 20) ** 0.9)
    assert optimizer.param_groups[2]["lr"] == 0.0  # the end of the schedule


def test_loss_ignores_the_ignore_label():
    module = small_module(msc_scales=None)
    logits = torch.randn(2, NUM_CLASSES, 8, 8)
    mask = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    ignored = torch.rand(2, 8, 8) < 0.4
    mask_ignored = mask.masked_fill(ignored, IGNORE_INDEX)
    loss = module.training_losses([logits], mask_ignored)["fused"]
    # the mean over the kept pixels only, whatever the ignored pixels' labels were
    per_pixel = F.cross_entropy(logits, mask, reduction="none")
    assert loss.item() == pytest.approx(per_pixel[~ignored].mean().item(), rel=1e-6)
    changed = mask.masked_fill(ignored, 0)
    assert module.training_losses([logits], changed)["fused"].item() != pytest.approx(loss.item())


def test_msc_loss_has_four_terms_against_labels_resized_to_each_output():
    module = small_module(msc_scales=(1.0, 0.75, 0.5))
    image = torch.rand(2, 3, 65, 65) * 255
    mask = torch.randint(0, NUM_CLASSES, (2, 65, 65))
    mask[:, :5] = IGNORE_INDEX
    outputs = module.model.forward_multi(image)
    losses = module.training_losses(outputs, mask)
    assert list(losses) == ["scale1", "scale0.75", "scale0.5", "fused"]
    for (name, loss), logits in zip(losses.items(), outputs):
        target = F.interpolate(mask[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        expected = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6), name
    # the scales really differ in size, so each term saw its own resized labels
    assert len({tuple(o.shape[-2:]) for o in outputs[:3]}) == 3


def test_loss_at_image_resolution_upsamples_the_logits():
    module = small_module(msc_scales=None, loss_resolution="image")
    logits = torch.randn(1, NUM_CLASSES, 5, 5)
    mask = torch.randint(0, NUM_CLASSES, (1, 33, 33))
    up = F.interpolate(logits, size=(33, 33), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, mask)
    assert module.training_losses([logits], mask)["fused"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_resize_labels_keeps_label_values():
    mask = torch.tensor([[[0, 1, 255, 3]]]).expand(1, 4, 4).contiguous()
    small = resize_labels(mask, (2, 2))
    assert set(small.unique().tolist()) <= {0, 1, 3, 255}


class ShiftingCRF(torch.nn.Module):
    """A stand-in refinement whose output argmax is known: it moves every pixel to class 0."""

    def forward(self, unary, image):
        assert image.dtype == torch.uint8 and image.shape[1] == 3
        assert unary.shape[-2:] == image.shape[-2:]
        q = torch.zeros_like(unary)
        q[:, 0] = 1
        return q


def test_evaluation_scores_the_prediction_and_the_crf_refinement_separately():
    module = small_module(msc_scales=None, eval_crf=True)
    module.crf = ShiftingCRF()
    module.eval()
    image = torch.rand(2, 3, 40, 48) * 255
    mask = torch.randint(0, NUM_CLASSES, (2, 40, 48))
    mask[0, :4] = IGNORE_INDEX
    with torch.no_grad():
        outputs = module.validation_step({"image": image, "mask": mask, "name": ["a", "b"]}, 0)
        pred = module.predict_probabilities(image).argmax(1)
    assert pred.shape == mask.shape
    plain = module.confusion["val"].compute()
    refined = module.confusion["val_crf"].compute()
    valid = mask != IGNORE_INDEX
    assert plain.sum() == refined.sum() == valid.sum()
    # the stand-in predicts class 0 everywhere: only column 0 is filled
    assert refined[:, 1:].sum() == 0
    assert torch.equal(plain.sum(0), torch.bincount(pred[valid], minlength=NUM_CLASSES))
    # what the reporting callbacks receive: both predictions
    assert torch.equal(outputs["prediction"], pred)
    assert bool((outputs["crf_prediction"] == 0).all())


def _first_batch_flops(module, batch_size: int) -> int:
    """What TrainingFlops reads from the first training batch it sees, run as Lightning runs it
    (the step and its backward between the batch hooks)."""
    module.log = lambda *args, **kwargs: None  # no Trainer here to log to
    callback = TrainingFlops()
    callback.setup(None, module, "fit")
    batch = {
        "image": torch.rand(batch_size, 3, 65, 65) * 255,
        "mask": torch.randint(0, NUM_CLASSES, (batch_size, 65, 65)),
    }
    for index in range(2):  # the second batch is not counted again
        callback.on_train_batch_start(None, module, batch, index)
        module.training_step(batch, index).backward()
        callback.on_train_batch_end(None, module, None, batch, index)
        if index == 0:
            first = module.flops_per_batch
    assert module.flops_per_batch == first
    return first


def test_training_flops_are_counted_on_the_real_first_batch_forward_and_backward():
    module = small_module(msc_scales=None)
    batch = {"image": torch.rand(1, 3, 65, 65) * 255, "mask": torch.randint(0, NUM_CLASSES, (1, 65, 65))}
    module.log = lambda *args, **kwargs: None  # no Trainer here to log to
    with FlopCounterMode(display=False) as forward_only:
        module.training_step(batch, 0)
    one, two = _first_batch_flops(module, 1), _first_batch_flops(small_module(msc_scales=None), 2)
    # backward costs about twice the forward: the count must hold both
    assert one > 2.5 * forward_only.get_total_flops() > 1e8
    assert two == pytest.approx(2 * one, rel=1e-6)


def test_wandb_report_refuses_a_bad_image_count():
    with pytest.raises(ValueError, match="num_images"):
        WandbReport(num_images=-1)


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="loss_resolution"):
        small_module(loss_resolution="pixels")
    with pytest.raises(ValueError, match="class_names"):
        small_module(class_names=["a", "b"])
    with pytest.raises(ValueError, match="backbone"):
        small_module(backbone="resnet1O1")
    with pytest.raises(TypeError, match="num_classes"):
        DeepLabV2Module(torch.nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="max_steps"):
        poly_lr_factor(1, 0)
    module = small_module(msc_scales=None)
    trainer = attach_trainer(module, max_steps=-1, max_epochs=-1)
    with pytest.raises(ValueError, match="finite length"):
        trainer.fit(module, tiny_batches(1))


CRF_CLASS = "lightning_deeplab.crf.DenseCRF"


def test_crf_settings_come_from_the_configuration_not_the_checkpoint(tmp_path):
    trained = small_module(msc_scales=None, eval_crf=True, crf=DenseCRF(bi_w=4.0))
    path = tmp_path / "model.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(trained)
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("crf.") for k in saved)
    assert any(k.startswith("model.") for k in saved)

    reloaded = DeepLabV2Module.load_from_checkpoint(path, crf={"class_path": CRF_CLASS, "init_args": {"bi_w": 5.0}})
    assert float(reloaded.crf.bi_w) == 5.0
    # the network is rebuilt from the checkpoint's description of it
    assert isinstance(reloaded.model, DeepLabV2) and reloaded.model.init_args == trained.model.init_args
    for key, value in trained.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[key], value), key


class Loads:
    def __init__(self) -> None:
        self.specs: list = []

    def __call__(self, model, spec) -> None:
        self.specs.append(spec)


def test_initial_weights_load_when_fitting_from_scratch_only(tmp_path, monkeypatch):
    loads = Loads()
    monkeypatch.setattr("lightning_deeplab.training.module.load_pretrained", loads)
    module = small_module(msc_scales=None, pretrained="imagenet")
    assert loads.specs == []  # never in the constructor
    trainer = attach_trainer(module, max_steps=1)
    trainer.validate(module, tiny_batches(1))
    assert loads.specs == []  # evaluation never loads them
    trainer.fit(module, tiny_batches(1))
    assert loads.specs == ["imagenet"]
    path = tmp_path / "step1.ckpt"
    trainer.save_checkpoint(path)
    trainer.fit(module, tiny_batches(1))  # a second fit goes on from the trained weights
    assert loads.specs == ["imagenet"]

    resumed = small_module(msc_scales=None, pretrained="imagenet")
    attach_trainer(resumed, max_steps=2).fit(resumed, tiny_batches(2), ckpt_path=str(path))
    assert loads.specs == ["imagenet"]  # the resumed run brings its own weights
    assert resumed.trainer.global_step == 2


def test_real_dense_crf_refines_the_upsampled_prediction():
    module = small_module(msc_scales=None, eval_crf=True)
    module.eval()
    image = torch.rand(1, 3, 24, 32) * 255
    with torch.no_grad():
        probs = module.predict_probabilities(image)
        q = module.refine_probabilities(probs, image)
    assert q.shape == probs.shape
    torch.testing.assert_close(q.sum(1), torch.ones(1, 24, 32))
    # the CRF changed the marginals: it is not an identity on the network's output
    assert not torch.allclose(q, probs, atol=1e-3)


def test_inference_settings_are_saved_as_plain_values_and_restored(tmp_path):
    import pytorch_lightning as pl

    from lightning_deeplab.evaluation.inference import InferenceConfig

    config = InferenceConfig(mode="slide", window=33, stride=16, scales=(1.0, 0.5), flip=True)
    module = small_module(msc_scales=None, inference=config)
    assert module.hparams.inference == config.to_dict()
    path = tmp_path / "model.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # no pickled classes in the checkpoint
    assert DeepLabV2Module.load_from_checkpoint(path).inference == config
    # settings given when loading win, as for the CRF
    reloaded = DeepLabV2Module.load_from_checkpoint(path, inference={"mode": "whole", "pad_to": 41})
    assert reloaded.inference == InferenceConfig(pad_to=41)


def test_evaluation_uses_the_inference_settings():
    from lightning_deeplab.evaluation.inference import InferenceConfig, infer_probabilities

    module = small_module(msc_scales=None, inference=InferenceConfig(flip=True))
    module.eval()
    image = torch.rand(1, 3, 22, 29) * 255
    with torch.no_grad():
        probs = module.predict_probabilities(image)
        plain = infer_probabilities(module.model, image, InferenceConfig())
        mirrored = infer_probabilities(module.model, image.flip(-1), InferenceConfig()).flip(-1)
    torch.testing.assert_close(probs, (plain + mirrored) / 2)
    assert not torch.allclose(probs, plain, atol=1e-4)


def test_prediction_can_refine_with_the_crf_when_evaluation_does_not():
    module = small_module(msc_scales=None, eval_crf=False, crf=DenseCRF(bi_w=5.0, iterations=2))
    assert float(module.crf.bi_w) == 5.0 and module.crf.iterations == 2
    assert not any(k.startswith("crf") for k in module.state_dict())
    probs = torch.rand(1, NUM_CLASSES, 12, 16).softmax(1)
    refined = module.refine_probabilities(probs, torch.rand(1, 3, 12, 16) * 255)
    torch.testing.assert_close(refined.sum(1), torch.ones(1, 12, 16))
    assert not torch.allclose(refined, probs, atol=1e-3)
