"""fedagg's ArrayRecord codec against Flower's own: the same bytes out, the same arrays back."""
from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedagg.flower.codec import params_to_record, record_to_params


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
