"""The .caffemodel reader on hand-made messages: layouts Caffe writes, and damaged files."""

import numpy as np
import pytest
from caffe_writer import (
    blob,
    field_bytes,
    field_float,
    field_string,
    field_varint,
    key,
    layer,
    net,
    skipped_fields,
    v1_layer,
    varint,
)

from lightning_deeplab.caffe import parse_net_parameter, read_caffemodel


def _write(tmp_path, content: bytes, name: str = "net.caffemodel"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_packed_floats_with_a_blob_shape_round_trip(tmp_path) -> None:
    weights = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32) - 1.5
    path = _write(tmp_path, net([layer("conv1", "Convolution", [blob(weights), blob(bias)], extras=skipped_fields())]))
    (conv,) = read_caffemodel(path)
    assert (conv.name, conv.type, len(conv.blobs)) == ("conv1", "Convolution", 2)
    assert conv.blobs[0].shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(conv.blobs[0].data, weights)
    np.testing.assert_array_equal(conv.blobs[1].data, bias)


def test_unpacked_floats_and_fields_after_them_are_read() -> None:
    values = np.linspace(-2, 2, 7, dtype=np.float32)
    # unpacked data, then the shape, then a second (packed) chunk of the same repeated field
    payload = b"".join(field_float(5, float(v)) for v in values[:5])
    payload += field_bytes(7, field_bytes(1, varint(7))) + field_bytes(5, values[5:].tobytes())
    (bn,) = parse_net_parameter(net([layer("bn", "BatchNorm", [payload])]))
    assert bn.blobs[0].shape == (7,)
    np.testing.assert_array_equal(bn.blobs[0].data, values)


def test_unpacked_floats_alone_match_packed_ones() -> None:
    values = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
    packed, unpacked = (
        parse_net_parameter(net([layer("s", "Scale", [blob(values, packed=p)])]))[0].blobs[0] for p in (True, False)
    )
    assert packed.shape == unpacked.shape == (2, 5)
    np.testing.assert_array_equal(unpacked.data, packed.data)


def test_legacy_dims_give_a_4d_blob() -> None:
    values = np.arange(6, dtype=np.float32)
    (fc,) = parse_net_parameter(net([layer("fc", "InnerProduct", [blob(values.reshape(2, 3), legacy_dims=True)])]))
    assert fc.blobs[0].shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(fc.blobs[0].data.reshape(-1), values)


def test_double_data_is_read_when_float_data_is_absent() -> None:
    values = np.array([1e-3, 2.5, -7.25])
    for packed in (True, False):
        (scale,) = parse_net_parameter(net([layer("s", "Scale", [blob(values, double=True, packed=packed)])]))
        assert scale.blobs[0].data.dtype == np.float64
        np.testing.assert_array_equal(scale.blobs[0].data, values)


def test_scalar_and_unpacked_dims() -> None:
    scalar = field_bytes(7, b"") + field_bytes(5, np.float32(999.5).tobytes())  # BlobShape with no dim
    unpacked_dims = field_bytes(7, field_varint(1, 2) + field_varint(1, 2))
    unpacked_dims += field_bytes(5, np.ones(4, np.float32).tobytes())
    (bn,) = parse_net_parameter(net([layer("bn", "BatchNorm", [scalar, unpacked_dims])]))
    assert bn.blobs[0].shape == () and float(bn.blobs[0].data) == 999.5
    assert bn.blobs[1].shape == (2, 2)


def test_v1_layers_and_current_layers_are_both_read_in_file_order() -> None:
    weights = np.ones((2, 1, 1, 1), np.float32)
    content = net(
        [layer("new_conv", "Convolution", [blob(weights)]), layer("relu", "ReLU")],
        v1_layers=[v1_layer("old_conv", 4, [blob(weights * 3, legacy_dims=True)]), v1_layer("old_relu", 18)],
    )
    layers = parse_net_parameter(content)
    assert [(x.name, x.type, len(x.blobs)) for x in layers] == [
        ("old_conv", "Convolution", 1),
        ("old_relu", "ReLU", 0),
        ("new_conv", "Convolution", 1),
        ("relu", "ReLU", 0),
    ]
    np.testing.assert_array_equal(layers[0].blobs[0].data, weights * 3)


def test_truncated_file_names_the_file_and_the_byte(tmp_path) -> None:
    content = net([layer("conv1", "Convolution", [blob(np.ones((8, 3, 3, 3), np.float32))])])
    path = _write(tmp_path, content[:-10])
    with pytest.raises(ValueError, match=r"net\.caffemodel.*truncated.*byte \d+"):
        read_caffemodel(path)


def test_length_past_the_end_reports_the_offset_of_the_length(tmp_path) -> None:
    good = net([layer("conv1", "Convolution", [blob(np.ones(3, np.float32))])])
    bad = good + key(100, 2) + bytes([0xE8, 0x07]) + b"short"  # declares 1000 bytes
    path = _write(tmp_path, bad, "bad.caffemodel")
    with pytest.raises(ValueError, match=rf"bad\.caffemodel.*byte {len(good) + 2}\b.*declares 1000 bytes"):
        read_caffemodel(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (key(9, 3), "unsupported wire type 3"),  # a group start
        (key(9, 7), "unsupported wire type 7"),
        (bytes([0x80] * 11), "varint longer than 10 bytes"),
        (bytes([0x80, 0x80]), "truncated varint"),
        (b"\x00\x01", "field number 0"),
        (key(9, 5) + b"\x00\x00", "truncated"),  # a fixed32 with 2 of its 4 bytes
    ],
)
def test_corrupt_fields_are_refused_with_their_offset(tmp_path, damage: bytes, message: str) -> None:
    good = net([layer("conv1", "Convolution", [blob(np.ones(3, np.float32))])])
    with pytest.raises(ValueError, match=rf"corrupt.caffemodel.*byte {len(good)}: .*{message}"):
        read_caffemodel(_write(tmp_path, good + damage, "corrupt.caffemodel"))


def test_blob_whose_data_does_not_fill_its_shape_is_refused() -> None:
    short = field_bytes(7, field_bytes(1, bytes([4, 4]))) + field_bytes(5, np.ones(15, np.float32).tobytes())
    content = net([layer("conv1", "Convolution", [short])])
    with pytest.raises(ValueError, match=r"shape \(4, 4\) needs 16 values but holds 15"):
        parse_net_parameter(content, source="x.caffemodel")


def test_packed_floats_of_a_ragged_length_are_refused() -> None:
    ragged = field_bytes(5, b"\x00" * 6)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        parse_net_parameter(net([layer("conv1", "Convolution", [ragged])]))


def test_a_layer_name_that_is_not_utf8_is_refused() -> None:
    body = field_bytes(1, b"\xff\xfe")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        parse_net_parameter(field_bytes(100, body))


def test_a_layer_field_that_is_not_a_message_is_refused() -> None:
    with pytest.raises(ValueError, match="field 100 should be a message"):
        parse_net_parameter(field_varint(100, 3))


def test_files_without_layers_and_missing_files(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"empty\.caffemodel: no layers"):
        read_caffemodel(_write(tmp_path, b"", "empty.caffemodel"))
    with pytest.raises(ValueError, match="no layers"):
        read_caffemodel(_write(tmp_path, field_string(1, "only a name"), "named.caffemodel"))
    with pytest.raises(FileNotFoundError, match="nothing.caffemodel"):
        read_caffemodel(tmp_path / "nothing.caffemodel")
