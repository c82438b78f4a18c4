"""Whole-image and sliding-window inference, test-time augmentation, and the scores report."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_deeplab.constants import PAD_VALUE
from lightning_deeplab.evaluation.inference import (
    InferenceConfig,
    format_scores_table,
    infer_probabilities,
    padded_side,
    scores_report,
    slide_logits,
    whole_logits,
    window_starts,
)
from lightning_deeplab.fileio import atomic_output, write_json
from lightning_deeplab.models import DeepLabV2

NUM_CLASSES = 3


class PixelwiseStride8(torch.nn.Module):
    """Scores at stride 8 that depend only on the input pixel they sit on (8i, 8j): windows
    whose offsets are multiples of 8 must then reproduce the whole-image scores exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.classifier = torch.nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, x):
        return self.classifier(x[..., ::8, ::8] / 255)


class RecordingModel(torch.nn.Module):
    """Wraps a model and keeps every input it was given."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.model(x)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return DeepLabV2("resnet18", num_classes=NUM_CLASSES, msc_scales=None, style="pytorch", norm="bn").eval()


def image_batch(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def test_size_rule_and_window_positions():
    assert [padded_side(s) for s in (1, 8, 9, 10, 500, 513)] == [1, 9, 9, 17, 505, 513]
    assert padded_side(300, minimum=513) == 513 and padded_side(600, minimum=513) == 601
    assert window_starts(20, 33, 16) == [0]
    assert window_starts(97, 33, 16) == [0, 16, 32, 48, 64]
    # the last window is moved back to end on the border, never past it
    assert window_starts(121, 33, 16) == [0, 16, 32, 48, 64, 80, 88]
    for length, window, stride in ((1024, 513, 342), (2048, 513, 342), (700, 100, 100)):
        starts = window_starts(length, window, stride)
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no pixel left out


def test_sliding_window_equals_whole_image_for_a_pixelwise_model():
    # 97x121 = (8*12+1)x(8*15+1); 33-pixel windows every 16 pixels, the last column of windows
    # shifted to 88: every window starts on a multiple of 8, so its scores are the whole
    # image's scores and the averaged overlaps must equal the single pass.
    model = PixelwiseStride8()
    image = image_batch(2, 97, 121)
    whole = whole_logits(model, image)
    slide = slide_logits(model, image, (33, 33), (16, 16))
    assert slide.shape == whole.shape == (2, NUM_CLASSES, 97, 121)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    # and the pixelwise model is not trivially constant
    assert whole.std() > 0.1


def test_sliding_window_equals_whole_image_when_the_window_covers_the_image(network):
    image = image_batch(1, 37, 45)
    whole = infer_probabilities(network, image, InferenceConfig(mode="whole", pad_to=57))
    slide = infer_probabilities(network, image, InferenceConfig(mode="slide", window=57, stride=40))
    assert slide.shape == (1, NUM_CLASSES, 37, 45)
    torch.testing.assert_close(slide, whole)


def test_padding_is_the_mean_colour_and_is_cropped_away_for_odd_sizes(network):
    recorder = RecordingModel(network)
    image = image_batch(2, 37, 45)
    for config, padded in (
        (InferenceConfig(), (41, 49)),  # the size rule: 8k + 1
        (InferenceConfig(pad_to=57), (57, 57)),
        (InferenceConfig(mode="slide", window=(25, 33), stride=(16, 16)), (25, 33)),
    ):
        recorder.inputs.clear()
        probs = infer_probabilities(recorder, image, config)
        assert probs.shape == (2, NUM_CLASSES, 37, 45), config
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 45))
        assert tuple(recorder.inputs[0].shape[-2:]) == padded, config
    # whole mode: the image at the top left, padding below and right of it
    recorder.inputs.clear()
    whole_logits(recorder, image, (57, 57))
    seen = recorder.inputs[0]
    assert torch.equal(seen[..., :37, :45], image)
    assert bool((seen[..., 37:, :] == PAD_VALUE).all()) and bool((seen[..., :, 45:] == PAD_VALUE).all())


def test_whole_and_sliding_inference_mark_their_padding_for_the_network(network):
    recorder = RecordingModel(network)
    image = image_batch(1, 20, 30)
    whole_logits(recorder, image, (33, 33))
    slide_logits(recorder, image, (25, 33), (16, 16))
    for seen in recorder.inputs:
        assert torch.equal(seen[..., :20, :30], image)
        assert bool((seen[..., 20:, :] == PAD_VALUE).all())


def test_sliding_window_pads_an_image_smaller_than_the_window(network):
    recorder = RecordingModel(network)
    image = image_batch(1, 20, 70)
    logits = slide_logits(recorder, image, (33, 33), (16, 16))
    assert logits.shape == (1, NUM_CLASSES, 20, 70)
    # one row of windows over the padded height, three along the width (0, 16, 32, then 37)
    assert [tuple(x.shape[-2:]) for x in recorder.inputs] == [(33, 33)] * 4


def test_flip_tta_is_the_mean_of_the_plain_and_the_mirrored_run(network):
    image = image_batch(1, 33, 41)
    flipped = infer_probabilities(network, image, InferenceConfig(flip=True))
    plain = whole_logits(network, image).softmax(1)
    mirrored = whole_logits(network, image.flip(-1)).softmax(1).flip(-1)
    torch.testing.assert_close(flipped, (plain + mirrored) / 2)
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # the network is not mirror-symmetric


def test_multi_scale_tta_averages_the_softmax_of_every_scale_resized_to_the_image(network):
    image = image_batch(2, 37, 45)
    scales = (1.0, 0.5, 1.5)
    probs = infer_probabilities(network, image, InferenceConfig(scales=scales, flip=True))
    assert probs.shape == (2, NUM_CLASSES, 37, 45)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 45))
    expected = []
    for scale, size in zip(scales, ((37, 45), (19, 23), (56, 68))):  # ceil(side * scale)
        scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False) if scale != 1 else image
        for mirror in (False, True):
            logits = whole_logits(network, scaled.flip(-1) if mirror else scaled)
            logits = logits.flip(-1) if mirror else logits
            expected.append(F.interpolate(logits, size=(37, 45), mode="bilinear", align_corners=False).softmax(1))
    torch.testing.assert_close(probs, torch.stack(expected).mean(0))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"mode": "slyde"}, ValueError, "inference.mode.*slyde"),
        ({"window": 7}, ValueError, "inference.window.*>= 8"),
        ({"window": (513, 4)}, ValueError, "inference.window"),
        ({"window": 33, "stride": 40}, ValueError, "stride.*larger than the window"),
        ({"stride": 0}, ValueError, "inference.stride"),
        ({"pad_to": 3}, ValueError, "inference.pad_to"),
        ({"window": "big"}, TypeError, "inference.window"),
        ({"scales": ()}, TypeError, "inference.scales"),
        ({"scales": (1.0, -0.5)}, ValueError, "inference.scales.*-0.5"),
        ({"flip": "yes"}, TypeError, "inference.flip"),
    ],
)
def test_bad_inference_settings_name_the_setting(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        InferenceConfig(**kwargs)


def test_config_round_trips_through_plain_values_and_rejects_unknown_keys():
    config = InferenceConfig(mode="slide", window=(513, 1025), stride=342, scales=(0.75, 1.0), flip=True)
    plain = config.to_dict()
    assert json.loads(json.dumps(plain)) == plain
    assert InferenceConfig.from_value(plain) == config
    assert InferenceConfig.from_value(None) == InferenceConfig()
    with pytest.raises(TypeError, match="windw"):
        InferenceConfig.from_value({"windw": 5})


def test_bad_image_is_named(network):
    with pytest.raises(ValueError, match=r"image must be a float tensor \[B, 3, H, W\]"):
        infer_probabilities(network, torch.rand(3, 20, 20))


# ------------------------------------------------------------------------------ the report
CLASSES = ["a", "b", "c", "d"]
# rows: ground truth, columns: prediction. "c" is predicted but never present; "d" is neither.
CONFUSION = torch.tensor([[50, 10, 0, 0], [5, 30, 5, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
CONFUSION_CRF = torch.tensor([[60, 0, 0, 0], [0, 40, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_scores_report_from_a_known_confusion_matrix():
    report = scores_report(CLASSES, CONFUSION, CONFUSION_CRF)
    plain = report["without_crf"]
    # by hand: IoU = TP / (GT + Pred - TP)
    assert plain["iou"]["a"] == pytest.approx(50 / (60 + 55 - 50))
    assert plain["iou"]["b"] == pytest.approx(30 / (40 + 40 - 30))
    assert plain["iou"]["c"] == 0.0
    assert plain["iou"]["d"] is None  # absent everywhere: no IoU; it counts 0 in the official means
    assert plain["miou_over"] == "all"
    assert plain["mIoU"] == pytest.approx((50 / 65 + 30 / 50 + 0 + 0) / 4)
    assert plain["pixel_acc"] == pytest.approx(80 / 100)
    assert plain["mean_acc"] == pytest.approx((50 / 60 + 30 / 40 + 0 + 0) / 4)
    assert plain["fw_iou"] == pytest.approx(0.6 * 50 / 65 + 0.4 * 30 / 50)
    assert plain["confusion"] == CONFUSION.tolist()
    assert report["num_pixels"] == 100
    crf = report["with_crf"]
    assert crf["mIoU"] == 0.5 and crf["iou"]["c"] is None and crf["pixel_acc"] == 1.0
    assert scores_report(CLASSES, CONFUSION)["with_crf"] is None


def test_scores_table_has_a_row_per_class_and_columns_without_and_with_crf():
    table = format_scores_table(scores_report(CLASSES, CONFUSION, CONFUSION_CRF, miou_over="present"), title="val")
    lines = table.splitlines()
    assert lines[0] == "val"
    assert lines[1].split() == ["class", "IoU", "IoU", "with", "CRF"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line and line.split()[0] in CLASSES}
    assert rows == {"a": ["76.92", "100.00"], "b": ["60.00", "100.00"], "c": ["0.00", "-"], "d": ["-", "-"]}
    summary = {line.rsplit(None, 2)[0]: line.rsplit(None, 2)[1:] for line in lines[-4:]}
    assert summary == {
        "mIoU": ["45.64", "100.00"],
        "pixel accuracy": ["80.00", "100.00"],
        "mean accuracy": ["79.17", "100.00"],
        "frequency-weighted IoU": ["70.15", "100.00"],
    }
    # without the CRF, one column of numbers
    single = format_scores_table(scores_report(CLASSES, CONFUSION))
    assert single.splitlines()[0].split() == ["class", "IoU"]


def test_json_is_written_atomically_and_without_nan(tmp_path):
    path = tmp_path / "deep" / "scores.json"
    report = scores_report(CLASSES, CONFUSION)
    write_json(path, report)
    assert json.loads(path.read_text()) == report
    with pytest.raises(ValueError):  # NaN is not JSON: refused, and the old file stays whole
        write_json(path, {"mIoU": math.nan})
    assert json.loads(path.read_text()) == report
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "partial.bin") as handle:
            handle.write(b"half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]
