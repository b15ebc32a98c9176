"""IDA (docs/algorithms.md §6)."""
from __future__ import annotations

import numpy as np
import pytest
from aggtools import ctx, info, upd

from fedagg.aggregators import build
from fedagg.seeding import rng


def run(ups, **opts):
    n = max(u.client_id for u in ups) + 1
    x = {k: np.zeros_like(v) for k, v in ups[0].params.items()}
    return build("ida", ctx(n=n), **opts).apply(x, ups, info(1, n, [u.client_id for u in ups]))


def test_two_clients_give_uniform_weights():
    g = rng(0, "test-ida")
    ups = [upd(0, {"w": g.normal(size=(3, 4))}, n=5), upd(1, {"w": 7 + g.normal(size=(3, 4))}, n=500)]
    for norm in ("l2", "l1"):
        out, m = run(ups, norm=norm)
        assert m["weights"] == pytest.approx([0.5, 0.5])
        np.testing.assert_allclose(out["w"], (ups[0].params["w"] + ups[1].params["w"]) / 2)


def test_hand_computed_l2_vs_l1():
    # points (0,0), (2,0), (1,3); mean (1,1); diffs (−1,−1), (1,−1), (0,2)
    ups = [upd(i, {"w": np.array(p, float)}) for i, p in enumerate([(0, 0), (2, 0), (1, 3)])]
    _, m = run(ups, norm="l2")  # d = √2, √2, 2
    c = np.array([1 / np.sqrt(2), 1 / np.sqrt(2), 0.5])
    assert m["weights"] == pytest.approx(list(c / c.sum()))
    assert m["ida_distances"] == pytest.approx([np.sqrt(2), np.sqrt(2), 2.0])
    _, m = run(ups, norm="l1")  # d = 2, 2, 2
    assert m["weights"] == pytest.approx([1 / 3] * 3)


def test_far_outlier_weight_goes_to_zero():
    # M clients near 0, one at distance D: with the unweighted-mean reference the
    # outlier's weight tends to 1/(1 + (M−1)²) (≪ 1/M) as D grows, monotonically.
    g = rng(1, "test-ida")
    M = 11
    base = [g.normal(scale=0.01, size=8) for _ in range(M - 1)]
    prev = 1.0
    for D in (1.0, 10.0, 1e3, 1e5):
        far = np.full(8, D / np.sqrt(8))
        ups = [upd(i, {"w": b}) for i, b in enumerate(base)] + [upd(M - 1, {"w": far})]
        out, m = run(ups)
        w_out = m["weights"][-1]
        assert w_out < prev
        prev = w_out
    assert w_out == pytest.approx(1 / (1 + (M - 1) ** 2), rel=1e-3)
    plain_mean = np.mean([u.params["w"] for u in ups], axis=0)
    assert np.linalg.norm(out["w"]) < 0.2 * np.linalg.norm(plain_mean)


def test_layer_granularity_and_include():
    # tensor "a" (vector): client 2 is far; kernel "k" (matrix): client 0 is far
    A = [np.zeros(2), np.ones(2), 10 * np.ones(2)]
    Kt = [5 * np.ones((2, 2)), np.zeros((2, 2)), np.ones((2, 2))]
    ups = [upd(i, {"a": A[i], "k": Kt[i]}) for i in range(3)]
    out, m = run(ups, granularity="layer")

    def ida_w(vals):
        mean = np.mean(vals, axis=0)
        c = 1 / np.array([np.linalg.norm(v - mean) for v in vals])
        return c / c.sum()

    wa, wk = ida_w(A), ida_w(Kt)
    np.testing.assert_allclose(out["a"], sum(w * a for w, a in zip(wa, A)))
    np.testing.assert_allclose(out["k"], sum(w * k for w, k in zip(wk, Kt)))
    assert m["weights"] == pytest.approx(list((wa + wk) / 2))
    # include=weights: only the ndim ≥ 2 kernel enters the (model-level) distance
    out, m = run(ups, include="weights")
    assert m["weights"] == pytest.approx(list(wk))
    np.testing.assert_allclose(out["a"], sum(w * a for w, a in zip(wk, A)))


def test_bn_buffers_excluded_from_distance_but_averaged_and_ints_not_averaged():
    ups = [
        upd(0, {"w": np.array([0.0]), "bn.running_mean": np.array([1e6]), "bn.num_batches_tracked": np.array(3)}),
        upd(1, {"w": np.array([1.0]), "bn.running_mean": np.array([0.0]), "bn.num_batches_tracked": np.array(5)}),
        upd(2, {"w": np.array([5.0]), "bn.running_mean": np.array([0.0]), "bn.num_batches_tracked": np.array(8)}),
    ]
    out, m = run(ups)
    c = np.array([1 / 2, 1 / 1, 1 / 3])  # from w only: mean 2, d = 2, 1, 3
    a = c / c.sum()
    assert m["weights"] == pytest.approx(list(a))
    assert out["bn.running_mean"][0] == pytest.approx(a[0] * 1e6)
    assert int(out["bn.num_batches_tracked"]) == 5  # the client with the largest α, not a mean
    assert out["bn.num_batches_tracked"].dtype == ups[0].params["bn.num_batches_tracked"].dtype


def test_degenerate_cases():
    one = [upd(4, {"w": np.array([3.0, 4.0])})]
    out, m = run(one)
    np.testing.assert_array_equal(out["w"], [3.0, 4.0])
    assert m["weights"] == [1.0]
    same = [upd(i, {"w": np.array([1.0, 2.0])}) for i in range(4)]
    out, m = run(same)  # all distances floored at eps: uniform
    assert m["weights"] == pytest.approx([0.25] * 4)
    assert np.all(np.isfinite(out["w"]))


def test_variants():
    ups = [upd(i, {"w": np.array([p])}, n=n, acc=acc) for i, (p, n, acc) in enumerate([(0.0, 10, 0.5), (1.0, 30, 0.25), (5.0, 10, 1.0)])]
    d = np.array([2.0, 1.0, 3.0])
    acc = np.array([0.5, 0.25, 1.0])
    n = np.array([10, 30, 10])
    for variant, c in (("intrac", 1 / acc), ("ida_intrac", 1 / (d * acc)), ("ida_fedavg", n / d)):
        _, m = run(ups, variant=variant)
        assert m["weights"] == pytest.approx(list(c / c.sum())), variant
    no_acc = [upd(0, {"w": np.zeros(1)}, acc=0.5), upd(7, {"w": np.ones(1)})]
    with pytest.raises(ValueError, match="client 7"):
        run(no_acc, variant="intrac")
    with pytest.raises(ValueError, match="norm"):
        build("ida", ctx(), norm="linf")


def test_rejects_mismatched_shapes_naming_the_client():
    with pytest.raises(ValueError, match="client 1"):
        run([upd(0, {"w": np.zeros(2)}), upd(1, {"w": np.zeros(3)})])
