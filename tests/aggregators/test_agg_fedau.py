"""FedAU estimator/weights and the baselines of its official code (docs/algorithms.md §3)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from aggtools import ctx, info, scalar, upd

from fedagg.aggregators import build
from fedagg.aggregators.fedau import IntervalEstimator
from fedagg.seeding import rng

PATTERN = [1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1]


def run_single_client(pattern, K):
    """One client (N=1), Δ = 1 on a scalar every time it participates, the
    global reset to 0 each round: the output is exactly η·ω/N = ω."""
    agg = build("fedau", ctx(n=1), K=K)
    used, closed = [], []
    prev_m, prev_o = 0, 0.0
    for t, q in enumerate(pattern):
        ups = [upd(0, scalar(1.0))] if q else []
        out, m = agg.apply(scalar(0.0), ups, info(t + 1, 1, [0] if q else []))
        if q:
            used.append(float(out["w"][0]))
            assert m["omega"] == [pytest.approx(used[-1])]
        else:
            assert out["w"][0] == 0.0  # nobody replied: no move
        e = agg.estimator
        M, om = int(e.M[0]), float(e.omega[0])
        if M > prev_m:  # an interval closed this round: recover its length
            closed.append((t, round(M * om - prev_m * prev_o, 9)))
        prev_m, prev_o = M, om
    return used, closed


def test_hand_written_schedule_K3():
    # Hand trace of the estimator with K=3 (0-based rounds):
    #  t0  q=1: ω=1 (no interval yet); closes interval 1 (first participation t0+1)
    #  t3  q=1: ω=mean[1]=1; closes 3 (two misses + 1)
    #  t4  q=1: ω=mean[1,3]=2; closes 1
    #  t5..t10 miss 6 = 2·K + 0: closes 3 at t7 and 3 at t10 (cutoff)
    #  t11 q=1: ω=mean[1,3,1,3,3]=11/5; closes 0+1 = 1
    used, closed = run_single_client(PATTERN, K=3)
    assert used == pytest.approx([1.0, 1.0, 2.0, 11 / 5])
    assert closed == [(0, 1), (3, 3), (4, 1), (7, 3), (10, 3), (11, 1)]


def test_hand_written_schedule_no_cutoff():
    # K=∞: intervals 1, 3, 1, then 7 (six misses + 1) closed only at t11
    used, closed = run_single_client(PATTERN, K=None)
    assert used == pytest.approx([1.0, 1.0, 2.0, 5 / 3])
    assert closed == [(0, 1), (3, 3), (4, 1), (11, 7)]


def official_loop(pattern, K):
    """The official code's bookkeeping (list of intervals + a counter)."""
    intervals, c, used = [], 0, []
    for q in pattern:
        if q:
            used.append(float(np.mean(intervals)) if intervals else 1.0)
            intervals.append(c + 1)
            c = 0
        else:
            c += 1
            if c >= K:
                intervals.append(c)
                c = 0
    return used


@pytest.mark.parametrize("K", [1, 2, 5, None])
def test_matches_official_loop_on_random_strings(K):
    g = rng(0, "test-fedau", K or 0)
    for _ in range(5):
        pattern = (g.random(40) < 0.3).astype(int).tolist()
        used, _ = run_single_client(pattern, K)
        assert used == pytest.approx(official_loop(pattern, K if K else math.inf))
    if K == 1:
        assert set(used) == {1.0}  # K = 1 gives ω ≡ 1


def geometric_limit(p, K):
    """E[G] / E[1 + ⌊(G−1)/K⌋] for G ~ Geometric(p) on {1, 2, ...}."""
    g = np.arange(1, 20000)
    pmf = p * (1 - p) ** (g - 1)
    return float((g * pmf).sum() / ((1 + (g - 1) // K) * pmf).sum())


@pytest.mark.parametrize("p,K,expected", [(0.2, None, 5.0), (0.1, None, 10.0), (0.2, 3, None), (0.1, 10, None)])
def test_mean_weight_limit_under_bernoulli(p, K, expected):
    if expected is None:
        expected = geometric_limit(p, K)
        assert expected < 1 / p - 0.5  # the finite-K limit really is smaller
    N, T = 4000, 600
    est = IntervalEstimator(N, K)
    g = rng(1, "test-bernoulli")
    for _ in range(T):
        est.update(g.random(N) < p)
    assert est.weights().mean() == pytest.approx(expected, rel=0.01)


def test_fedau_divides_by_N_and_uses_eta():
    # round 1: every client has ω = 1; x + η/N Σ Δ with N = 4, two replied
    agg = build("fedau", ctx(n=4), server_lr=2.0)
    out, m = agg.apply(scalar(1.0), [upd(0, scalar(3.0)), upd(2, scalar(5.0))], info(1, 4, [0, 2]))
    assert out["w"][0] == pytest.approx(1.0 + 2.0 * (2.0 + 4.0) / 4)
    assert m["weights"] == [0.25, 0.25] and m["weight_clients"] == [0, 2]
    # round 2: client 1 replies first (ω = 1) and records interval 2 (0-based t0+1);
    # round 3: client 1 uses ω = 2, client 3 replies first: ω = 1 (unscaled)
    _, m = agg.apply(scalar(0.0), [upd(1, scalar(0.0))], info(2, 4, [1]))
    assert m["omega"] == [1.0]
    _, m = agg.apply(scalar(0.0), [upd(1, scalar(1.0)), upd(3, scalar(1.0))], info(3, 4, [1, 3]))
    assert m["omega"] == [2.0, 1.0]


def test_skipped_rounds_count_as_absences():
    a, b = build("fedau", ctx(n=2), K=None), build("fedau", ctx(n=2), K=None)
    a.apply(scalar(0.0), [upd(0, scalar(1.0))], info(1, 2, [0]))
    b.apply(scalar(0.0), [upd(0, scalar(1.0))], info(1, 2, [0]))
    a.apply(scalar(0.0), [], info(2, 2, []))
    a.apply(scalar(0.0), [], info(3, 2, []))
    a.apply(scalar(0.0), [upd(0, scalar(1.0))], info(4, 2, [0]))
    b.apply(scalar(0.0), [upd(0, scalar(1.0))], info(4, 2, [0]))  # rounds 2, 3 skipped
    np.testing.assert_array_equal(a.estimator.omega, b.estimator.omega)
    assert float(a.estimator.omega[0]) == pytest.approx((1 + 3) / 2)
    with pytest.raises(ValueError, match="round 4 after round 4"):
        b.apply(scalar(0.0), [], info(4, 2, []))


def test_baselines_hand_computed():
    x = scalar(0.0)
    ups = [upd(0, scalar(2.0)), upd(1, scalar(4.0))]
    i1 = info(1, 4, [0, 1])
    out, m = build("avg_participating", ctx(n=4)).apply(x, ups, i1)
    assert out["w"][0] == pytest.approx(3.0) and sum(m["weights"]) == pytest.approx(1.0)
    out, _ = build("avg_all", ctx(n=4)).apply(x, ups, i1)
    assert out["w"][0] == pytest.approx(6.0 / 4)
    kp = build("known_prob", ctx(n=4, oracle_participation_probs=np.array([0.5, 0.25, 1.0, 1.0])))
    out, m = kp.apply(x, ups, i1)
    assert out["w"][0] == pytest.approx((2 / 0.5 + 4 / 0.25) / 4)
    assert m["weights"] == pytest.approx([0.5, 1.0])
    # empty round: no move for the participation-averaged rules
    for name in ("avg_participating", "avg_all", "fedau", "fedvarp"):
        out, _ = build(name, ctx(n=4)).apply(scalar(7.0), [], info(1, 4, []))
        assert out["w"][0] == 7.0


def test_known_prob_is_the_only_oracle_reader():
    with pytest.raises(ValueError, match="oracle_participation_probs"):
        build("known_prob", ctx(n=4))
    with pytest.raises(ValueError, match="shape"):
        build("known_prob", ctx(n=4, oracle_participation_probs=np.ones(3)))
    # the other rules ignore the oracle: same output with or without it
    for name in ("fedau", "avg_all", "mifa", "fedvarp", "avg_participating"):
        ups = [upd(1, scalar(2.0))]
        a, _ = build(name, ctx(n=4)).apply(scalar(0.0), ups, info(1, 4, [1]))
        b, _ = build(name, ctx(n=4, oracle_participation_probs=np.full(4, 0.01))).apply(
            scalar(0.0), ups, info(1, 4, [1])
        )
        assert a["w"][0] == b["w"][0]


def test_mifa_uses_stored_updates_of_absent_clients():
    agg = build("mifa", ctx(n=4))
    out, _ = agg.apply(scalar(0.0), [upd(0, scalar(4.0)), upd(1, scalar(8.0))], info(1, 4, [0, 1]))
    assert out["w"][0] == pytest.approx((4 + 8) / 4)
    # round 2 from x=3: client 0 sends Δ=1; client 1's stored Δ=8 still counts
    out, _ = agg.apply(scalar(3.0), [upd(0, scalar(4.0))], info(2, 4, [0]))
    assert out["w"][0] == pytest.approx(3.0 + (1 + 8) / 4)
    out, _ = agg.apply(scalar(5.0), [], info(3, 4, []))  # empty round still moves
    assert out["w"][0] == pytest.approx(5.0 + 9 / 4)


def test_fedvarp_hand_computed():
    agg = build("fedvarp", ctx(n=4))
    # round 1: y = 0: (1/2)(4 + 8) + 0 = 6; then y0 = 4, y1 = 8, ȳ = 3
    out, m = agg.apply(scalar(0.0), [upd(0, scalar(4.0)), upd(1, scalar(8.0))], info(1, 4, [0, 1]))
    assert out["w"][0] == pytest.approx(6.0) and sum(m["weights"]) == pytest.approx(1.0)
    # round 2 from x=10: client 0 Δ=2 (y0=4), client 2 Δ=4 (y2=0): ((2−4)+(4−0))/2 + 3 = 4
    out, _ = agg.apply(scalar(10.0), [upd(0, scalar(12.0)), upd(2, scalar(14.0))], info(2, 4, [0, 2]))
    assert out["w"][0] == pytest.approx(14.0)
    # now y = (2, 8, 4, 0): ȳ = 3.5; client 3 Δ=1: (1 − 0) + 3.5
    out, _ = agg.apply(scalar(0.0), [upd(3, scalar(1.0))], info(3, 4, [3]))
    assert out["w"][0] == pytest.approx(4.5)


def test_bn_buffers_and_integer_tensors():
    def model(w, rv, nbt):
        return {"w": np.array([w]), "bn.running_var": np.array([rv]), "bn.num_batches_tracked": np.array(nbt)}

    x = model(0.0, 1.0, 0)
    # client 1 first replies in round 5 (interval 5 -> ω = 5 in round 6), client 0 is new
    agg = build("fedau", ctx(n=2), server_lr=3.0)
    for r in range(1, 6):
        agg.apply(x, [upd(1, model(0.0, 1.0, r))] if r == 5 else [], info(r, 2, [1] if r == 5 else []))
    ups = [upd(0, model(1.0, 2.0, 7)), upd(1, model(1.0, 4.0, 9))]
    out, m = agg.apply(x, ups, info(6, 2, [0, 1]))
    assert m["omega"] == [1.0, 5.0]
    assert out["w"][0] == pytest.approx(3.0 * (1 + 5) / 2)
    assert out["bn.running_var"][0] == pytest.approx(3.0)  # plain mean, never extrapolated
    assert int(out["bn.num_batches_tracked"]) == 9  # from the largest weight
    assert out["bn.num_batches_tracked"].dtype == x["bn.num_batches_tracked"].dtype


def test_rejects_mismatched_and_nonfinite_updates():
    agg = build("fedau", ctx(n=3))
    bad = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="client 2"):
        agg.apply(scalar(0.0), [upd(0, scalar(1.0)), upd(2, bad)], info(1, 3, [0, 2]))
    with pytest.raises(ValueError, match="client 1.*non-finite"):
        agg.apply(scalar(0.0), [upd(1, scalar(np.nan))], info(1, 3, [1]))
    with pytest.raises(ValueError, match="replied"):
        agg.apply(scalar(0.0), [upd(1, scalar(1.0))], info(1, 3, [0]))
    with pytest.raises(ValueError, match="K=0"):
        build("fedau", ctx(n=3), K=0)
