"""The protobuf wire format, decoding only: enough to walk the messages of a ``.caffemodel``.

A message is a sequence of fields, each a varint key ``(field_number << 3) | wire_type``
followed by its value: a varint (wire type 0), 8 little-endian bytes (1), a varint length
and that many bytes (2: strings, nested messages, packed repeated numbers) or 4 little-endian
bytes (5). Wire types 3 and 4 (groups) are not used by Caffe and are refused.

Every position here is an absolute byte offset into the buffer being decoded, so an error
can say where in the file the damage is.
"""

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LENGTH_DELIMITED = 2
WIRE_FIXED32 = 5

_MAX_VARINT_BYTES = 10
_VALUE_SIZES = {WIRE_FIXED64: 8, WIRE_FIXED32: 4}


class WireFormatError(ValueError):
    """Bytes that are not valid protobuf wire format; ``offset`` is where decoding failed."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class Field(NamedTuple):
    """One decoded field: its number, wire type, where its key starts, and its value.

    ``value`` is the integer for varints; for the other wire types it is unused (0) and the
    payload lies in ``buffer[start:end]``.
    """

    number: int
    wire_type: int
    offset: int
    value: int
    start: int
    end: int


def read_varint(buffer: memoryview, position: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``position``: ``(unsigned value, position after it)``."""
    result = shift = 0
    start = position
    while True:
        if position >= end:
            raise WireFormatError(start, "truncated varint")
        if position - start >= _MAX_VARINT_BYTES:
            raise WireFormatError(start, f"varint longer than {_MAX_VARINT_BYTES} bytes")
        byte = buffer[position]
        result |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return result, position
        shift += 7


def as_signed64(value: int) -> int:
    """A varint read as int32/int64: negative numbers are sent as 64-bit two's complement."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buffer: memoryview, start: int, end: int) -> Iterator[Field]:
    """The fields of the message in ``buffer[start:end]``, in order, without decoding payloads."""
    position = start
    while position < end:
        key_offset = position
        key, position = read_varint(buffer, position, end)
        number, wire_type = key >> 3, key & 0x7
        if number == 0:
            raise WireFormatError(key_offset, "field number 0 is invalid")
        if wire_type == WIRE_VARINT:
            value, position = read_varint(buffer, position, end)
            yield Field(number, wire_type, key_offset, value, position, position)
            continue
        if wire_type == WIRE_LENGTH_DELIMITED:
            length_offset = position
            size, position = read_varint(buffer, position, end)
            if size > end - position:
                raise WireFormatError(
                    length_offset,
                    f"field {number} declares {size} bytes but only {end - position} remain in its message",
                )
        elif wire_type in _VALUE_SIZES:
            size = _VALUE_SIZES[wire_type]
            if size > end - position:
                raise WireFormatError(key_offset, f"field {number} is truncated ({end - position} of {size} bytes)")
        else:
            raise WireFormatError(key_offset, f"field {number} has unsupported wire type {wire_type}")
        yield Field(number, wire_type, key_offset, 0, position, position + size)
        position += size


def decode_string(buffer: memoryview, field: Field) -> str:
    """A length-delimited field as UTF-8 text."""
    _expect_wire_type(field, WIRE_LENGTH_DELIMITED)
    try:
        return bytes(buffer[field.start : field.end]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise WireFormatError(field.start + error.start, f"field {field.number} is not valid UTF-8") from None


def packed_varints(buffer: memoryview, field: Field) -> list[int]:
    """A packed repeated varint field (e.g. ``repeated int64 dim = 1 [packed = true]``)."""
    _expect_wire_type(field, WIRE_LENGTH_DELIMITED)
    values, position = [], field.start
    while position < field.end:
        value, position = read_varint(buffer, position, field.end)
        values.append(value)
    return values


def packed_numbers(buffer: memoryview, field: Field, dtype: str) -> np.ndarray:
    """A packed repeated fixed-size field as a read-only view: ``dtype`` is ``"<f4"`` or ``"<f8"``."""
    _expect_wire_type(field, WIRE_LENGTH_DELIMITED)
    itemsize = np.dtype(dtype).itemsize
    if (field.end - field.start) % itemsize:
        raise WireFormatError(
            field.start,
            f"packed field {field.number} holds {field.end - field.start} bytes, not a multiple of {itemsize}",
        )
    return np.frombuffer(buffer[field.start : field.end], dtype=dtype)


def unpacked_run(buffer: memoryview, field: Field, dtype: str, end: int) -> tuple[np.ndarray, int]:
    """Values of an unpacked repeated fixed-size field: ``field`` and the same-keyed fields after it.

    Writers that ignore ``[packed = true]`` repeat key + value for every element; a run of
    such fields is gathered in one vectorised pass instead of one Python step per number.
    Returns the values and the position after the run (at most ``end``).
    """
    itemsize = np.dtype(dtype).itemsize
    key_size = field.start - field.offset
    stride = key_size + itemsize
    key = bytes(buffer[field.offset : field.start])
    count = (end - field.offset) // stride
    records = np.frombuffer(buffer[field.offset : field.offset + count * stride], dtype=np.uint8).reshape(count, stride)
    same_key = np.all(records[:, :key_size] == np.frombuffer(key, dtype=np.uint8), axis=1)
    run = count if same_key.all() else int(np.argmin(same_key))
    values = np.ascontiguousarray(records[:run, key_size:]).view(dtype).reshape(run)
    return values, field.offset + run * stride


def _expect_wire_type(field: Field, wire_type: int) -> None:
    if field.wire_type != wire_type:
        raise WireFormatError(
            field.offset, f"field {field.number} has wire type {field.wire_type}, expected {wire_type}"
        )
