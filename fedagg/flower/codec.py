"""Message <-> plain values, and validation at the Flower boundary.

Every reply is checked once here, before any aggregator sees it: parameter
names, shapes and dtypes equal to what was sent; all values finite; an
optional norm bound on the update; metadata well formed. A reply that fails
raises :class:`InvalidUpdate` with a reason the host logs and counts.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from ..aggregators.base import ClientUpdate, InvalidUpdate, Params

__all__ = ["InvalidUpdate", "example_count", "params_to_record", "record_to_params", "reply_to_update",
           "single_record"]

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


R = TypeVar("R", ArrayRecord, MetricRecord)


def single_record(records: Mapping[str, R], key: str, kind: str) -> R:
    """The record named ``key``, else the only record of its kind (Flower takes the
    single ArrayRecord / MetricRecord of a reply whatever its name)."""
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    names = sorted(records)
    raise InvalidUpdate(f"reply has no '{key}' record" + (f" and {len(names)} {kind}s {names}" if names else ""))


def example_count(metrics: Mapping[str, object], key: str = "num-examples") -> int:
    """A reply's example count: a positive whole number (an integral float such as 32.0 counts)."""
    n = metrics.get(key)
    if isinstance(n, float) and np.isfinite(n) and n.is_integer() and not isinstance(n, bool):
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise InvalidUpdate(f"{key}={n!r} is not a positive whole number")
    return n


def reply_to_update(
    msg: Message,
    client_id: int,
    sent: Params,
    num_classes: int,
    max_update_norm: float | None = None,
    *,
    weight_key: str = "num-examples",
    arrays_key: str = "arrays",
) -> ClientUpdate:
    """Decode and validate one train reply; raise InvalidUpdate on any defect. The
    ArrayRecord named ``arrays_key`` (or the reply's only one, whatever its name,
    as Flower reads it) holds the model; ``weight_key`` the example count."""
    if msg.has_error():
        raise InvalidUpdate(f"client error: {msg.error.reason}")
    content = msg.content
    arrays = single_record(content.array_records, arrays_key, "ArrayRecord")
    m = single_record(content.metric_records, "metrics", "MetricRecord")
    try:
        params = record_to_params(arrays)
    except Exception as e:  # malformed bytes
        raise InvalidUpdate(f"arrays cannot be decoded: {e}") from e
    if list(params) != list(sent):
        missing = sorted(set(sent) - set(params))
        extra = sorted(set(params) - set(sent))
        raise InvalidUpdate(f"parameter names differ (missing {missing[:5]}, unexpected {extra[:5]})")
    sq = 0.0
    for k, ref in sent.items():
        v = params[k]
        if v.shape != ref.shape:
            raise InvalidUpdate(f"'{k}' has shape {v.shape}, expected {ref.shape}")
        if v.dtype != ref.dtype:
            raise InvalidUpdate(f"'{k}' has dtype {v.dtype}, expected {ref.dtype}")
        if np.issubdtype(v.dtype, np.floating):
            if not np.isfinite(v).all():
                raise InvalidUpdate(f"'{k}' contains NaN or Inf")
            if max_update_norm is not None:
                sq += float(np.sum((v.astype(np.float64) - ref) ** 2))
    if max_update_norm is not None and np.sqrt(sq) > max_update_norm:
        raise InvalidUpdate(f"update norm {np.sqrt(sq):.4g} exceeds validation.max_update_norm={max_update_norm}")
    n = example_count(m, weight_key)
    hist = m.get("label-hist")
    label_hist = None
    if hist is not None and num_classes > 0:  # 0: the number of classes is unknown (a foreign ClientApp)
        label_hist = np.asarray(hist)
        if label_hist.ndim != 1 or len(label_hist) != num_classes:
            raise InvalidUpdate(f"label-hist has length {label_hist.size}, expected {num_classes} classes")
        if not np.issubdtype(label_hist.dtype, np.number) or np.any(label_hist < 0) or not np.all(np.isfinite(label_hist)):
            raise InvalidUpdate("label-hist has negative or non-finite counts")
        if label_hist.sum() <= 0:
            raise InvalidUpdate("label-hist is all zero")

    def _finite(key: str) -> float | None:
        v = m.get(key)
        if v is None:
            return None
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise InvalidUpdate(f"{key}={v!r} is not a finite number")
        return float(v)

    loss, acc = _finite("train-loss"), _finite("train-accuracy")
    if acc is not None and not 0.0 <= acc <= 1.0:
        raise InvalidUpdate(f"train-accuracy={acc} is outside [0, 1] (a fraction of the examples, not a percentage)")
    steps = m.get("steps")
    meta: dict[str, int | float | str] = {"steps": steps} if isinstance(steps, int) else {}
    return ClientUpdate(client_id, params, n, label_hist, loss, acc, meta)
