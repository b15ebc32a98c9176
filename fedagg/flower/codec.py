"""ArrayRecord <-> plain numpy parameters, byte for byte as Flower's own ``Array``.

(Reading a whole train reply back, with its validation, is :mod:`fedagg.flower.protocol`'s.)
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

Params = dict[str, np.ndarray]

__all__ = ["params_to_record", "record_to_params", "stacked_record"]

# An Array of stype "numpy.ndarray" holds ``np.save(a)``'s bytes: an .npy header, then the raw
# values. Encoding and decoding one costs np.save / np.load's per-call overhead (tens of
# microseconds, more than the copy for a small model's tensors, paid per client per round), so
# the header is built and parsed once per (dtype, shape) and the values are copied directly.
_MAGIC = b"\x93NUMPY"
_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}
_PARSED: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """np.save's header of a C-ordered array of ``dtype`` and ``shape``."""
    key = (dtype.str, shape)
    head = _HEADERS.get(key)
    if head is None:
        buf = io.BytesIO()
        d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(buf, d)
        head = _HEADERS[key] = buf.getvalue()
    return head


def _raw(a: np.ndarray) -> memoryview:
    """The values of ``a`` as bytes, C order, without a copy where ``a`` is C-contiguous."""
    return np.ascontiguousarray(a).reshape(-1).data.cast("B")


def _npy_array(dtype: np.dtype, shape: tuple[int, ...], parts: Sequence[memoryview]) -> Array:
    """The Array of a C-ordered array of ``dtype`` and ``shape`` whose values are ``parts`` in order: the header
    and the values joined in one copy."""
    return Array(dtype=str(dtype), shape=tuple(int(d) for d in shape), stype="numpy.ndarray",
                 data=b"".join([_npy_header(dtype, shape), *parts]))


def _array(v: np.ndarray) -> Array:
    """``Array(v)``, byte for byte, without np.save."""
    v = np.asarray(v)
    if v.dtype.hasobject or v.dtype.kind == "V":  # np.save's general path (never a model tensor)
        return Array(np.ascontiguousarray(v).reshape(v.shape))
    return _npy_array(v.dtype, v.shape, [_raw(v)])


def _stacked_array(rows: Sequence[np.ndarray]) -> Array:
    """``Array(np.stack(rows))``, byte for byte, with each row copied once (no stacked temporary)."""
    arrays = [np.asarray(r) for r in rows]
    first = arrays[0]
    dtype = first.dtype
    if (dtype.hasobject or dtype.kind == "V" or not dtype.isnative
            or any(a.shape != first.shape or a.dtype != dtype for a in arrays)):
        return _array(np.stack(arrays))  # np.stack's dtype (promoted, native byte order) or its error
    return _npy_array(dtype, (len(arrays), *first.shape), [_raw(a) for a in arrays])


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


def stacked_record(rows: Sequence[Params]) -> ArrayRecord:
    """``params_to_record({k: np.stack([r[k] for r in rows])})``, byte for byte, each row copied once."""
    rec = ArrayRecord()
    for k in rows[0]:
        rec[k] = _stacked_array([r[k] for r in rows])
    return rec


def record_to_params(rec: ArrayRecord) -> Params:
    return {k: _ndarray(v) for k, v in rec.items()}
