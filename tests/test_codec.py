"""fedagg's ArrayRecord codec against Flower's own: the same bytes out, the same arrays back."""
from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedagg.flower.codec import params_to_record, record_to_params, stacked_record


def _params() -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    return {"w": r.normal(size=(3, 4)).astype(np.float32), "b": r.normal(size=7).astype(np.float32)[::2],
            "n": np.array(3, dtype=np.int64), "d": r.normal(size=(5, 2))[:, 0], "e": np.zeros((0, 3), np.float32),
            "f": np.asfortranarray(r.normal(size=(4, 3))), "h": r.normal(size=(2, 2)).astype(np.float16),
            "big": np.arange(24, dtype=">i4").reshape(2, 3, 4)}


def test_encoding_is_byte_identical_to_flower_array():
    p = _params()
    ours = params_to_record(p)
    for k, v in p.items():
        ref = Array(np.ascontiguousarray(v).reshape(v.shape))
        assert (ours[k].data, ours[k].shape, ours[k].dtype, ours[k].stype) == (ref.data, ref.shape, ref.dtype, ref.stype), k


def test_decoding_equals_numpy_load_and_is_writable():
    p = _params()
    rec = ArrayRecord({k: Array(np.ascontiguousarray(v).reshape(v.shape)) for k, v in p.items()})
    back = record_to_params(rec)
    assert list(back) == list(p)
    for k, v in p.items():
        ref = rec[k].numpy()
        assert back[k].dtype == ref.dtype and back[k].shape == ref.shape, k
        np.testing.assert_array_equal(back[k], v)
        back[k][...] = 0  # a copy the caller owns: aggregators may work in place
    np.testing.assert_array_equal(rec["w"].numpy(), p["w"])


def test_truncated_bytes_are_refused():
    rec = params_to_record({"w": np.ones((3, 4), np.float32)})
    arr = rec["w"]
    rec["w"] = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=arr.data[:-4])
    with pytest.raises(ValueError, match="bytes"):
        record_to_params(rec)


def test_stacked_record_is_the_record_of_the_stacked_arrays_byte_for_byte():
    """A chunk reply's parameters: every row copied once into the Array, the bytes those of np.stack's result
    (rows that are views of one stacked array, as the stacked training hands them, included)."""
    r = np.random.default_rng(1)
    rows = [{k: (v + r.normal(size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in _params().items()}
            for _ in range(3)]
    whole = np.random.default_rng(2).normal(size=(4, 5, 2)).astype(np.float32)
    rows_of_one = [{"w": whole[j]} for j in range(4)]
    mixed = [{"w": np.ones(3, np.float32)}, {"w": np.ones(3, np.float64)}]  # np.stack promotes
    for rs in (rows, rows_of_one, mixed):
        ours = stacked_record(rs)
        ref = params_to_record({k: np.stack([x[k] for x in rs]) for k in rs[0]})
        assert list(ours) == list(ref)
        for k in ref:
            assert (ours[k].data, ours[k].shape, ours[k].dtype) == (ref[k].data, ref[k].shape, ref[k].dtype), k
    with pytest.raises(ValueError):
        stacked_record([{"w": np.ones(3)}, {"w": np.ones(4)}])
