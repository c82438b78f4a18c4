"""A tiny protobuf encoder for tests: writes NetParameter / LayerParameter / BlobProto bytes.

Field numbers are caffe.proto's. Independent of the reader under test: it only encodes.
"""

import struct
from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (int32/int64 fields)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return key(number, BYTES) + varint(len(payload)) + payload


def field_string(number: int, text: str) -> bytes:
    return field_bytes(number, text.encode("utf-8"))


def field_float(number: int, value: float) -> bytes:
    return key(number, FIXED32) + struct.pack("<f", value)


def field_double(number: int, value: float) -> bytes:
    return key(number, FIXED64) + struct.pack("<d", value)


def blob(
    values: np.ndarray,
    *,
    packed: bool = True,
    legacy_dims: bool = False,
    double: bool = False,
    shape: Optional[Sequence[int]] = None,
) -> bytes:
    """A BlobProto with ``values``' shape (BlobShape, or legacy num/channels/height/width)."""
    values = np.asarray(values)
    dims = list(values.shape if shape is None else shape)
    out = b""
    if legacy_dims:
        padded = [1] * (4 - len(dims)) + dims
        for number, dim in zip((1, 2, 3, 4), padded):
            out += field_varint(number, dim)
    else:
        out += field_bytes(7, field_bytes(1, b"".join(varint(d) for d in dims)))  # BlobShape, packed dim
    flat = values.reshape(-1)
    number, dtype = (8, "<f8") if double else (5, "<f4")
    if packed:
        out += field_bytes(number, flat.astype(dtype).tobytes())
    else:
        encode = field_double if double else field_float
        out += b"".join(encode(number, float(v)) for v in flat)
    return out


def layer(name: str, layer_type: str, blobs: Iterable[bytes] = (), *, extras: bytes = b"") -> bytes:
    """A LayerParameter (name = 1, type = 2, blobs = 7) plus other fields the reader must skip."""
    body = field_string(1, name) + field_string(2, layer_type)
    body += field_string(3, "bottom_" + name) + field_string(4, name)  # bottom, top
    body += extras
    body += b"".join(field_bytes(7, b) for b in blobs)
    return body


def v1_layer(name: str, type_enum: int, blobs: Iterable[bytes] = ()) -> bytes:
    """A V1LayerParameter (bottom = 2, top = 3, name = 4, type = 5 enum, blobs = 6)."""
    body = field_string(2, "data") + field_string(3, name) + field_string(4, name) + field_varint(5, type_enum)
    body += field_float(7, 1.0) + field_float(7, 2.0)  # blobs_lr, skipped
    body += b"".join(field_bytes(6, b) for b in blobs)
    return body


def net(layers: Iterable[bytes] = (), v1_layers: Iterable[bytes] = (), *, name: str = "net") -> bytes:
    """A NetParameter: name = 1, input_dim = 4 (skipped), layers = 2 (V1), layer = 100."""
    out = field_string(1, name) + field_varint(4, 1) + field_varint(4, 3)
    out += b"".join(field_bytes(2, v1) for v1 in v1_layers)
    out += b"".join(field_bytes(100, body) for body in layers)
    return out


def skipped_fields() -> bytes:
    """Fields of every wire type that a reader of weights must step over (param, phase, ...)."""
    param = field_bytes(6, field_string(1, "shared") + field_float(3, 1.0) + field_float(4, 1.0))  # ParamSpec
    conv_param = field_bytes(106, field_varint(1, 64) + field_varint(2, 0))  # ConvolutionParameter
    return param + conv_param + field_varint(10, 1) + field_double(999, 2.5) + field_float(5, 1.0)
