"""Pictures people can read: overlays leave the background as the photo, and every overlay
and comparison strip carries a legend of exactly the classes it shows (and titles, for strips)."""

from __future__ import annotations

import numpy as np

from lightning_deeplab.data.palette import VOC_PALETTE
from lightning_deeplab.commands.demo import PANEL_TITLES, comparison_strip
from lightning_deeplab.legend import font_size, legend_band, legend_entries
from lightning_deeplab.callbacks.prediction_writer import SegmentationWriter
from lightning_deeplab.viz import colorize

NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle"]
H, W = 120, 160


def photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 226, size=(H, W, 3), dtype=np.uint8)


def labels(*classes: int) -> np.ndarray:
    """Vertical stripes of ``classes``, background (0) in the left quarter."""
    mask = np.zeros((H, W), np.int64)
    for k, cls in enumerate(classes):
        mask[:, W // 4 + k * 20 : W // 4 + (k + 1) * 20] = cls
    return mask


def swatch_pixels(picture: np.ndarray, colour) -> int:
    return int((picture.reshape(-1, 3) == np.asarray(colour, np.uint8)).all(axis=1).sum())


def assert_legend_shows_exactly(band: np.ndarray, shown: set[int]) -> None:
    size = font_size(H, W)
    for cls in range(1, len(NAMES)):  # colours that antialiased black text cannot make
        count = swatch_pixels(band, VOC_PALETTE[cls])
        assert (count >= (size - 2) ** 2) if cls in shown else count == 0, (cls, count)


def test_a_blend_leaves_the_background_as_the_photo_and_has_a_legend():
    image, mask = photo(), labels(1, 3)
    sheet = SegmentationWriter(overlay="blend").overlay_sheet(image, mask, VOC_PALETTE, NAMES)
    band, picture = sheet[:-H], sheet[-H:]
    assert sheet.shape[1] == W and len(band) > 0
    assert (picture[mask == 0] == image[mask == 0]).all()  # not darkened by black at 50%
    assert (picture[mask == 1] != image[mask == 1]).any(axis=1).all()
    assert_legend_shows_exactly(band, {1, 3})
    assert [e.name for e in legend_entries([mask], VOC_PALETTE, NAMES, leave_out=(0,))] == ["aeroplane", "bird"]

    painted = SegmentationWriter(overlay="blend", paint_background=True).overlay_sheet(image, mask, VOC_PALETTE, NAMES)
    assert (painted[-H:][mask == 0] != image[mask == 0]).any()


def test_side_by_side_lists_the_background_it_paints():
    mask = labels(2)
    sheet = SegmentationWriter(overlay="side_by_side").overlay_sheet(photo(), mask, VOC_PALETTE, NAMES)
    assert sheet.shape[1] == 2 * W
    assert [e.name for e in legend_entries([mask], VOC_PALETTE, NAMES)] == ["background", "bicycle"]
    assert_legend_shows_exactly(sheet[:-H], {2})


def test_a_comparison_strip_has_titles_panels_and_the_legend_of_its_label_panels():
    image, truth, pred, crf = photo(1), labels(1, 2), labels(1, 4), labels(4)
    panels = [image, colorize(truth, VOC_PALETTE), colorize(pred, VOC_PALETTE), colorize(crf, VOC_PALETTE)]
    strip = comparison_strip(panels, truth, pred, crf, VOC_PALETTE, NAMES)
    plain = np.concatenate(panels, axis=1)
    assert (strip[-H:] == plain).all()  # the panels as they are, below the legend and the titles
    legend_rows = len(legend_band(legend_entries([truth, pred, crf], VOC_PALETTE, NAMES), 4 * W, font_size(H, W)))
    legend, titles = strip[:legend_rows], strip[legend_rows:-H]
    assert_legend_shows_exactly(legend, {1, 2, 4})
    assert_legend_shows_exactly(titles, set())
    for k in range(len(PANEL_TITLES)):  # dark text on white over every panel
        assert (titles[:, k * W : (k + 1) * W] < 100).all(axis=2).any(), PANEL_TITLES[k]
