"""FedDisco (docs/algorithms.md), with the NIID-2 worked example."""
from __future__ import annotations

import numpy as np
import pytest
from aggtools import ctx, info, upd

from fedagg.aggregators import build


def niid2_updates():
    """NIID-2: 5 biased clients with 2 classes × 4165 images, 1 unbiased client
    with 10 × 833: all 8330 images; client k's model is the scalar k."""
    ups = []
    for k in range(5):
        h = np.zeros(10, int)
        h[2 * k], h[2 * k + 1] = 4165, 4165
        ups.append(upd(k, {"w": np.array([float(k)])}, n=8330, hist=h))
    ups.append(upd(5, {"w": np.array([5.0])}, n=8330, hist=np.full(10, 833)))
    return ups


def test_worked_example_kl():
    agg = build("feddisco", ctx(n=6, c=10))
    out, m = agg.apply({"w": np.zeros(1)}, niid2_updates(), info(1, 6, range(6)))
    assert m["discrepancy"] == pytest.approx([0.2] * 5 + [0.0])  # log 5 each, normalised
    # w̃ = 1/6 − 0.5·0.2 + 0.1 = 1/6 (biased), 1/6 + 0.1 (unbiased); sum 1.1
    assert m["weights"] == pytest.approx([5 / 33] * 5 + [8 / 33])
    assert m["weights"] == pytest.approx([0.1515] * 5 + [0.2424], abs=1e-4)
    assert m["disco_fallback"] == 0
    assert out["w"][0] == pytest.approx((0 + 1 + 2 + 3 + 4) * 5 / 33 + 5 * 8 / 33)


def test_worked_example_l2():
    agg = build("feddisco", ctx(n=6, c=10), metric="l2")
    out, m = agg.apply({"w": np.zeros(1)}, niid2_updates(), info(1, 6, range(6)))
    assert m["discrepancy"] == pytest.approx([np.sqrt(0.4)] * 5 + [0.0])
    assert m["weights"] == pytest.approx([0.0] * 5 + [1.0])
    assert out["w"][0] == pytest.approx(5.0)


def test_l1_cosine_and_target():
    ups = niid2_updates()
    _, m = build("feddisco", ctx(n=6, c=10), metric="l1").apply({"w": np.zeros(1)}, ups, info(1, 6, range(6)))
    assert m["discrepancy"][0] == pytest.approx(2 * 0.4 + 8 * 0.1)
    _, m = build("feddisco", ctx(n=6, c=10), metric="cosine").apply({"w": np.zeros(1)}, ups, info(1, 6, range(6)))
    assert m["discrepancy"][0] == pytest.approx(1 - 0.1 / (np.sqrt(0.5) * np.sqrt(0.1)))
    assert m["discrepancy"][5] == pytest.approx(0.0, abs=1e-12)
    # a target equal to client 0's distribution makes client 0 the "unbiased" one
    target = [0.5, 0.5] + [0.0] * 8
    _, m = build("feddisco", ctx(n=6, c=10), metric="l2", target=target).apply(
        {"w": np.zeros(1)}, ups, info(1, 6, range(6))
    )
    assert m["discrepancy"][0] == 0.0 and m["weights"][0] > 0.5
    with pytest.raises(ValueError, match="zero class"):
        build("feddisco", ctx(n=6, c=10), target=target)  # KL to a zero class
    with pytest.raises(ValueError, match="expected 10"):
        build("feddisco", ctx(n=6, c=10), target=[1.0, 1.0])


def test_size_weights_enter_as_fractions():
    # equal histograms (d equal for l2): w̃ = n_k − a·d + b with n_k = N_k/ΣN
    h = [5, 5, 0]
    ups = [upd(0, {"w": np.zeros(1)}, n=30, hist=h), upd(1, {"w": np.ones(1)}, n=10, hist=h)]
    _, m = build("feddisco", ctx(n=2, c=3), metric="l2").apply({"w": np.zeros(1)}, ups, info(1, 2, [0, 1]))
    d = np.linalg.norm(np.array([0.5, 0.5, 0]) - 1 / 3)
    w = np.array([0.75 - 0.5 * d + 0.1, 0.25 - 0.5 * d + 0.1])
    assert m["weights"] == pytest.approx(list(w / w.sum()))


def test_fallback_to_size_weights_when_all_clip():
    ups = [upd(k, {"w": np.array([float(k)])}, n=n, hist=[9, 1, 0]) for k, n in ((0, 10), (1, 30))]
    out, m = build("feddisco", ctx(n=2, c=3), metric="l2", a=10.0, b=0.0).apply(
        {"w": np.zeros(1)}, ups, info(1, 2, [0, 1])
    )
    assert m["disco_fallback"] == 1
    assert m["weights"] == pytest.approx([0.25, 0.75])
    assert out["w"][0] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "hist,match",
    [(None, "client 3: .*label_hist"), ([1, 2], "client 3: .*shape"), ([1, -1, 3], "client 3: .*negative"),
     ([0, 0, 0], "client 3: .*all zero")],
)
def test_rejects_bad_histograms_naming_the_client(hist, match):
    ups = [upd(0, {"w": np.zeros(1)}, hist=[1, 1, 1]), upd(3, {"w": np.zeros(1)}, hist=hist)]
    with pytest.raises(ValueError, match=match):
        build("feddisco", ctx(n=4, c=3)).apply({"w": np.zeros(1)}, ups, info(1, 4, [0, 3]))


def test_composes_with_server_lr_and_momentum():
    ups = [upd(0, {"w": np.array([2.0])}, hist=[1, 1]), upd(1, {"w": np.array([4.0])}, hist=[1, 1])]
    agg = build("feddisco", ctx(n=2, c=2), server_lr=0.5)
    out, _ = agg.apply({"w": np.array([0.0])}, ups, info(1, 2, [0, 1]))
    assert out["w"][0] == pytest.approx(0.5 * 3.0)  # x + η(x̄ − x)
    agg = build("feddisco", ctx(n=2, c=2), server_momentum=0.5, server_momentum_form="heavy_ball")
    out, _ = agg.apply({"w": np.array([0.0])}, ups, info(1, 2, [0, 1]))  # v = −3
    assert out["w"][0] == pytest.approx(3.0)
    out, _ = agg.apply({"w": np.array([0.0])}, ups, info(2, 2, [0, 1]))  # v = 0.5·(−3) − 3
    assert out["w"][0] == pytest.approx(4.5)


def test_fedprox_term_goes_to_clients():
    assert build("feddisco", ctx(), proximal_mu=0.01).client_config() == {"proximal_mu": 0.01}
    assert build("feddisco", ctx()).client_config() == {}  # never overrides train.proximal_mu
    with pytest.raises(ValueError):
        build("feddisco", ctx(), metric="kl_div")
