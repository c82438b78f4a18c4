"""Read the layers and weight blobs of a ``.caffemodel`` file without Caffe or protobuf.

Only the part of caffe.proto that carries weights is decoded (field numbers as in caffe.proto):

- ``NetParameter``: ``layer = 100`` (``LayerParameter``), legacy ``layers = 2`` (``V1LayerParameter``).
- ``LayerParameter``: ``name = 1``, ``type = 2`` (a string), ``blobs = 7``.
- ``V1LayerParameter``: ``name = 4``, ``type = 5`` (the ``LayerType`` enum), ``blobs = 6``.
- ``BlobProto``: ``shape = 7`` (``BlobShape``: packed ``dim = 1``), ``data = 5`` (float, packed or
  not), ``double_data = 8``, legacy 4-D ``num = 1``, ``channels = 2``, ``height = 3``, ``width = 4``.

Every other field is skipped by its wire type. Damage (truncation, bad wire types, a blob
whose data does not fill its shape) raises ValueError naming the file and the byte offset.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .protobuf import (
    WIRE_FIXED32,
    WIRE_FIXED64,
    WIRE_LENGTH_DELIMITED,
    WIRE_VARINT,
    Field,
    WireFormatError,
    as_signed64,
    decode_string,
    iter_fields,
    packed_numbers,
    packed_varints,
    unpacked_run,
)

# NetParameter
NET_LAYER = 100
NET_V1_LAYERS = 2
# LayerParameter
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
# V1LayerParameter
V1_NAME, V1_TYPE, V1_BLOBS = 4, 5, 6
# BlobProto / BlobShape
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1

#: ``V1LayerParameter.LayerType`` numbers and the type strings of the current ``LayerParameter``.
V1_LAYER_TYPES = {
    0: "None",
    1: "Accuracy",
    2: "BNLL",
    3: "Concat",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    7: "EuclideanLoss",
    8: "Flatten",
    9: "HDF5Data",
    10: "HDF5Output",
    11: "Im2col",
    12: "ImageData",
    13: "InfogainLoss",
    14: "InnerProduct",
    15: "LRN",
    16: "MultinomialLogisticLoss",
    17: "Pooling",
    18: "ReLU",
    19: "Sigmoid",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    23: "TanH",
    24: "WindowData",
    25: "Eltwise",
    26: "Power",
    27: "SigmoidCrossEntropyLoss",
    28: "HingeLoss",
    29: "MemoryData",
    30: "ArgMax",
    31: "Threshold",
    32: "DummyData",
    33: "Slice",
    34: "MVN",
    35: "AbsVal",
    36: "Silence",
    37: "ContrastiveLoss",
    38: "Exp",
    39: "Deconvolution",
}

_LEGACY_DIMS = (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)


@dataclass(frozen=True)
class CaffeBlob:
    """One parameter blob: ``data`` (float32 or float64) already reshaped to ``shape``."""

    shape: tuple[int, ...]
    data: np.ndarray
    offset: int  # where the BlobProto starts in the file


@dataclass(frozen=True)
class CaffeLayer:
    """A layer of the net: its name, type string, and parameter blobs in file order."""

    name: str
    type: str
    blobs: tuple[CaffeBlob, ...]
    offset: int  # where the layer message starts in the file


def read_caffemodel(path: "str | os.PathLike[str]") -> list[CaffeLayer]:
    """All layers of the ``.caffemodel`` at ``path`` (``layer`` and legacy ``layers`` alike), in file order.

    Raises FileNotFoundError when ``path`` is not a file, and ValueError naming the file and
    the byte offset when its content is not a readable NetParameter.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"caffemodel {str(path)!r} does not exist (or is not a file)")
    layers = parse_net_parameter(path.read_bytes(), source=str(path))
    if not layers:
        raise ValueError(f"{path}: no layers found; is this a .caffemodel (a binary NetParameter)?")
    return layers


def parse_net_parameter(content: bytes, source: str = "<bytes>") -> list[CaffeLayer]:
    """The layers of a serialised NetParameter; ``source`` names it in error messages."""
    buffer = memoryview(content)
    try:
        layers = []
        for field in iter_fields(buffer, 0, len(buffer)):
            if field.number == NET_LAYER:
                layers.append(_parse_layer(buffer, _expect_message(field), LAYER_NAME, LAYER_BLOBS))
            elif field.number == NET_V1_LAYERS:
                layers.append(_parse_layer(buffer, _expect_message(field), V1_NAME, V1_BLOBS))
        return layers
    except WireFormatError as error:
        raise ValueError(f"{source}: corrupt or truncated caffemodel at byte {error.offset}: {error.reason}") from None


def _expect_message(field: Field) -> Field:
    if field.wire_type != WIRE_LENGTH_DELIMITED:
        raise WireFormatError(
            field.offset, f"field {field.number} should be a message but has wire type {field.wire_type}"
        )
    return field


def _parse_layer(buffer: memoryview, message: Field, name_field: int, blobs_field: int) -> CaffeLayer:
    name, layer_type, blobs = "", "", []
    legacy = name_field == V1_NAME
    for field in iter_fields(buffer, message.start, message.end):
        if field.number == name_field:
            name = decode_string(buffer, field)
        elif field.number == blobs_field:
            blobs.append(_parse_blob(buffer, _expect_message(field)))
        elif legacy and field.number == V1_TYPE and field.wire_type == WIRE_VARINT:
            layer_type = V1_LAYER_TYPES.get(field.value, f"V1LayerType{field.value}")
        elif not legacy and field.number == LAYER_TYPE:
            layer_type = decode_string(buffer, field)
    return CaffeLayer(name, layer_type, tuple(blobs), message.offset)


def _parse_blob(buffer: memoryview, message: Field) -> CaffeBlob:
    shape: Optional[list[int]] = None
    legacy_dims: dict[int, int] = {}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    position = message.start
    while position < message.end:
        for field in iter_fields(buffer, position, message.end):
            if field.number in (BLOB_DATA, BLOB_DOUBLE_DATA):
                dtype, chunks = ("<f4", floats) if field.number == BLOB_DATA else ("<f8", doubles)
                if field.wire_type == WIRE_LENGTH_DELIMITED:
                    chunks.append(packed_numbers(buffer, field, dtype))
                    continue
                if field.wire_type != (WIRE_FIXED32 if dtype == "<f4" else WIRE_FIXED64):
                    raise WireFormatError(field.offset, f"blob field {field.number} has wire type {field.wire_type}")
                values, position = unpacked_run(buffer, field, dtype, message.end)
                chunks.append(values)
                break  # resume the field walk after the run
            if field.number == BLOB_SHAPE:
                shape = _parse_shape(buffer, _expect_message(field))
            elif field.number in _LEGACY_DIMS and field.wire_type == WIRE_VARINT:
                legacy_dims[field.number] = as_signed64(field.value)
        else:
            position = message.end

    data = _concatenate(floats) if floats else _concatenate(doubles)
    if shape is None and legacy_dims:
        # Legacy blobs are always 4-D (num, channels, height, width); unset dims are 0.
        shape = [legacy_dims.get(number, 0) for number in _LEGACY_DIMS]
    elif shape is None:
        shape = [data.size]  # no shape recorded at all: keep the values as a vector
    if any(dim < 0 for dim in shape):
        raise WireFormatError(message.offset, f"blob has a negative dimension in shape {tuple(shape)}")
    if data.size != math.prod(shape):  # an empty shape is a scalar: one value
        raise WireFormatError(
            message.offset, f"blob of shape {tuple(shape)} needs {math.prod(shape)} values but holds {data.size}"
        )
    return CaffeBlob(tuple(shape), data.reshape(shape), message.offset)


def _parse_shape(buffer: memoryview, message: Field) -> list[int]:
    dims: list[int] = []
    for field in iter_fields(buffer, message.start, message.end):
        if field.number != SHAPE_DIM:
            continue
        if field.wire_type == WIRE_LENGTH_DELIMITED:
            dims.extend(as_signed64(value) for value in packed_varints(buffer, field))
        elif field.wire_type == WIRE_VARINT:
            dims.append(as_signed64(field.value))
        else:
            raise WireFormatError(field.offset, f"BlobShape.dim has wire type {field.wire_type}")
    return dims


def _concatenate(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


__all__ = ["CaffeBlob", "CaffeLayer", "V1_LAYER_TYPES", "parse_net_parameter", "read_caffemodel"]
