"""Open Inference Protocol datatypes and their numpy twins, plus the BYTES wire format."""

from __future__ import annotations

import struct

import numpy as np

from servegraph.runtime.protocol.datatype_names import DATATYPES
from servegraph.runtime.protocol.errors import InvalidInput

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
"""Every v2 datatype numpy can hold (BF16 has no numpy dtype and is refused)."""

assert tuple(V2_TO_NUMPY) == DATATYPES, "datatype_names.DATATYPES and V2_TO_NUMPY must agree"

_NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


def describe_input(name: str, model: str = "") -> str:
    """How error messages name a tensor: "input 'X' for model 'm'" (Triton's wording)."""
    return f"input '{name}' for model '{model}'" if model else f"input '{name}'"


def numpy_dtype(datatype: str, where: str = "") -> np.dtype:
    """The numpy dtype for a v2 datatype name, or a 400 naming the unknown type.

    ``where`` (from ``describe_input``) says which tensor asked, so the caller can fix it.
    """
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        of = f" of {where}" if where else ""
        raise InvalidInput(
            f"unsupported datatype '{datatype}'{of}; expected one of {', '.join(V2_TO_NUMPY)}"
        ) from None


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name for a numpy dtype (strings and bytes map to BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[np.dtype(dtype)]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


MAX_ELEMENTS = 1 << 40
"""Refuse shapes above this many elements before anything is allocated or multiplied on."""


def element_count(shape: tuple[int, ...] | list[int], where: str = "") -> int:
    """prod(shape), refusing negative dims and absurd sizes instead of overflowing."""
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            of = f" of {where}" if where else ""
            raise InvalidInput(f"shape {list(shape)}{of} has an invalid dimension {dim!r}")
    count = 1
    for dim in shape:
        # Zero dims are skipped, not multiplied: numpy still refuses [0, 2**40, 2**40] as too
        # big, so an empty tensor must have sane dims too. Stopping early also keeps a hostile
        # shape from costing bignum arithmetic.
        count *= max(dim, 1)
        if count > MAX_ELEMENTS:
            of = f" of {where}" if where else ""
            raise InvalidInput(f"shape {list(shape)}{of} is too large: over {MAX_ELEMENTS} elements")
    return 0 if 0 in shape else count


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str, model: str = "") -> np.ndarray:
    """Decode ``count`` length-prefixed (uint32 LE) elements of a BYTES tensor."""
    where = f"BYTES {describe_input(name, model)}"
    view = memoryview(buffer)
    total = len(view)
    if count * 4 > total:
        # Every element has a 4-byte length prefix: refuse before allocating ``count`` slots.
        raise InvalidInput(
            f"{where} is truncated: expected at least {count * 4} bytes for {count} "
            f"elements, got {total}"
        )
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > total:
            raise InvalidInput(f"{where} is truncated: expected {count} elements, found {i}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > total:
            raise InvalidInput(f"{where} element {i} runs past the end of the data")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != total:
        raise InvalidInput(f"{where} has {total - offset} trailing bytes after {count} elements")
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor as length-prefixed elements in row-major order."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def tensor_from_buffer(
    buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str, model: str = ""
) -> np.ndarray:
    """Wrap raw little-endian tensor bytes without copying; check the byte size exactly."""
    count = 1
    for dim in shape:  # the common case (positive int dims) without building a message
        if type(dim) is not int or dim <= 0:
            count = element_count(shape, describe_input(name, model))
            break
        count *= dim
    else:
        if count > MAX_ELEMENTS:
            element_count(shape, describe_input(name, model))  # raises, naming the input
    if datatype == "BYTES":
        return deserialize_bytes(buffer, count, name, model).reshape(shape)
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        numpy_dtype(datatype, describe_input(name, model))  # raises, naming the input
        raise AssertionError("unreachable")
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input byte size mismatch for {describe_input(name, model)}: expected {expected} bytes "
            f"for shape {list(shape)} of {datatype}, got {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def tensor_to_bytes(array: np.ndarray) -> bytes:
    """Raw bytes of a tensor in the v2 binary layout (row-major, little-endian)."""
    if array.dtype.kind in ("O", "S", "U"):
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()
