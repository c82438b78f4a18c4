import numpy as np
import pytest

from lightning_deeplab.data import VOC_CLASSES, VOC_PALETTE, voc_colormap


def test_voc_palette_matches_the_published_colours():
    # colours documented with the VOC devkit: background, aeroplane, bicycle, bird, boat,
    # person, tvmonitor, and the cream of the 255 borders
    expected = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        15: (192, 128, 128),
        20: (0, 64, 128),
        255: (224, 224, 192),
    }
    for index, colour in expected.items():
        assert tuple(VOC_PALETTE[index]) == colour, index
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in VOC_PALETTE}) == 256  # one colour per index
    assert not VOC_PALETTE.flags.writeable


def test_colormap_prefix_and_bad_size():
    assert np.array_equal(voc_colormap(21), VOC_PALETTE[:21])
    with pytest.raises(ValueError, match="num_entries"):
        voc_colormap(257)


def test_voc_class_names():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"
