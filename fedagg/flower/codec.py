"""ArrayRecord <-> plain numpy parameters, byte for byte as Flower's own ``Array``.

(Reading a whole train reply back, with its validation, is :mod:`fedagg.flower.protocol`'s.)
"""
from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord

Params = dict[str, np.ndarray]

__all__ = ["params_to_record", "record_to_params"]

# An Array of stype "numpy.ndarray" holds ``np.save(a)``'s bytes: an .npy header, then the raw
# values. Encoding and decoding one costs np.save / np.load's per-call overhead (tens of
# microseconds, more than the copy for a small model's tensors, paid per client per round), so
# the header is built and parsed once per (dtype, shape) and the values are copied directly.
_MAGIC = b"\x93NUMPY"
_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}
_PARSED: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _npy_header(a: np.ndarray) -> bytes:
    key = (a.dtype.str, a.shape)
    head = _HEADERS.get(key)
    if head is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
        head = _HEADERS[key] = buf.getvalue()
    return head


def _array(v: np.ndarray) -> Array:
    """``Array(v)``, byte for byte, without np.save."""
    v = np.asarray(v)
    if v.dtype.hasobject or v.dtype.kind == "V":  # np.save's general path (never a model tensor)
        return Array(np.ascontiguousarray(v).reshape(v.shape))
    c = np.ascontiguousarray(v).reshape(v.shape)  # ascontiguousarray makes a 0-d array 1-d
    return Array(dtype=str(v.dtype), shape=tuple(int(d) for d in v.shape), stype="numpy.ndarray",
                 data=_npy_header(c) + c.tobytes())


def _ndarray(arr: Array) -> np.ndarray:
    """``arr.numpy()`` (a writable copy), parsing the .npy header once per (dtype, shape)."""
    data = arr.data
    if arr.stype != "numpy.ndarray" or data[:6] != _MAGIC or data[6] != 1:
        return np.asarray(arr.numpy())
    end = 10 + int.from_bytes(data[8:10], "little")
    head = bytes(data[:end])
    parsed = _PARSED.get(head)
    if parsed is None:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(head[8:]))  # after magic + version
        parsed = _PARSED[head] = (dtype, tuple(shape), bool(fortran))
    dtype, shape, fortran = parsed
    if fortran or dtype.hasobject:
        return np.asarray(arr.numpy())
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f"array data has {len(data) - end} bytes, its header says {count} x {dtype}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape).copy()


def params_to_record(params: Params) -> ArrayRecord:
    """One Array per tensor, with exactly the bytes ``Array(ndarray)`` would hold (0-d tensors keep their shape).
    Filled key by key: ``ArrayRecord(dict)`` would build every Array a second time."""
    rec = ArrayRecord()
    for k, v in params.items():
        rec[k] = _array(v)
    return rec


def record_to_params(rec: ArrayRecord) -> Params:
    return {k: _ndarray(v) for k, v in rec.items()}
