"""FedNova and FedDisco-on-a-rule (docs/algorithms.md), held against the official code's update rules,
transcribed below (read, not copied):

- NIID-Bench, Xtra-Computing/NIID-Bench @ 61b901ab645e62391772e9898384c2c3485b7a6c, ``experiments.py``:
  ``train_net_fednova`` (a_i, d_i on the client) and the ``args.alg == 'fednova'`` branch (the server step);
- JYWa/FedNova @ 47b4e096dfb19dc43c728896fff335a5befb645d, ``distoptim/FedNova.py``: ``FedNova.step``'s
  per-step recursion for a_i (``local_counter``, ``local_normalizing_vec``);
- FedDisco, MediaBrain-SJTU/FedDisco @ f3ea299b5c0d5909aee1f4f4ba0151a837575e55, ``disco.py``
  (``get_distribution_difference``, ``disco_weight_adjusting``) and ``algorithms/fednova.py`` (``fednova_alg``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from aggtools import ctx, info, upd
from scipy import special

from fedagg.aggregators import build
from fedagg.aggregators.base import ClientUpdate, InvalidUpdate
from fedagg.aggregators.fednova import normalizer


# ------------------------------------------------------------------ the official rules, transcribed
def niid_bench_a_i(tau: int, rho: float) -> float:
    """experiments.py, train_net_fednova: a_i = (tau - rho*(1 - rho**tau)/(1 - rho)) / (1 - rho)."""
    return (tau - rho * (1 - pow(rho, tau)) / (1 - rho)) / (1 - rho)


def niid_bench_server(global_para: dict, nets: list[dict], taus: list[int], n_list: list[int], rho: float) -> dict:
    """experiments.py, the fednova branch: d_i = (x - y_i)/a_i on the client; the server forms
    d_total = Σ d_i n_i/total_n and coeff = Σ a_i n_i/total_n, then x -= coeff * d_total (every key)."""
    a_list = [niid_bench_a_i(t, rho) for t in taus]
    d_list = [{k: (global_para[k] - net[k]) / a for k in global_para} for net, a in zip(nets, a_list)]
    total_n = sum(n_list)
    d_total_round = {k: 0.0 for k in global_para}
    for i in range(len(nets)):
        for key in d_list[i]:
            d_total_round[key] = d_total_round[key] + d_list[i][key] * n_list[i] / total_n
    coeff = 0.0
    for i in range(len(nets)):
        coeff = coeff + a_list[i] * n_list[i] / total_n
    return {k: global_para[k] - coeff * d_total_round[k] for k in global_para}


def jywa_normalizing_vec(tau: int, momentum: float) -> float:
    """distoptim/FedNova.py, FedNova.step (mu = 0): after each step, with momentum,
    local_counter = local_counter*momentum + 1; local_normalizing_vec += local_counter;
    without momentum local_normalizing_vec += 1."""
    local_counter, local_normalizing_vec = 0.0, 0.0
    for _ in range(tau):
        if momentum != 0:
            local_counter = local_counter * momentum + 1
            local_normalizing_vec += local_counter
        if momentum == 0:
            local_normalizing_vec += 1
    return local_normalizing_vec


def feddisco_difference(cls_counts: np.ndarray, hypo: np.ndarray) -> np.ndarray:
    """disco.py, get_distribution_difference(metric='kl'): scipy's kl_div summed per client, normalised."""
    local = cls_counts / cls_counts.sum(axis=1)[:, np.newaxis]
    difference = np.sum(special.kl_div(local, hypo), axis=1)
    return np.zeros(len(difference)) if np.sum(difference) == 0 else difference / np.sum(difference)


def feddisco_adjust(old_weight, difference, a: float, b: float) -> np.ndarray:
    """disco.py, disco_weight_adjusting: ReLU(old − a·d + b), normalised."""
    new_weight = np.copy(np.asarray(old_weight) - a * difference + b)
    new_weight[new_weight < 0.0] = 0.0
    return new_weight / new_weight.sum()


def feddisco_fednova(global_w: dict, nets: list[dict], freqs: np.ndarray, client_step: list[int]) -> dict:
    """algorithms/fednova.py, fednova_alg (after the disco weights): tao_eff = Σ p_j τ_j;
    correct_term = Σ p_j/τ_j · tao_eff; x ← (1 − correct_term)·x + Σ y_j p_j/τ_j · tao_eff."""
    tao_eff = sum(freqs[j] * client_step[j] for j in range(len(freqs)))
    correct_term = sum(freqs[j] / client_step[j] * tao_eff for j in range(len(freqs)))
    out = {k: (1.0 - correct_term) * v for k, v in global_w.items()}
    for j, net in enumerate(nets):
        for k in net:
            out[k] = out[k] + net[k] * freqs[j] / client_step[j] * tao_eff
    return out


# ------------------------------------------------------------------ worked inputs
def _updates(rng, x: dict, taus, ns, hists=None) -> list[ClientUpdate]:
    out = []
    for i, (t, n) in enumerate(zip(taus, ns)):
        params = {k: v + rng.normal(0, 0.1, v.shape) for k, v in x.items()}
        out.append(ClientUpdate(i, params, n, None if hists is None else np.asarray(hists[i]),
                                metadata={"steps": t}))
    return out


X = {"fc.weight": np.arange(12, dtype=np.float64).reshape(3, 4) / 10, "fc.bias": np.array([0.5, -1.0, 2.0])}
TAUS, NS = [3, 7, 12, 1], [30, 70, 120, 5]  # heterogeneous steps (epochs: 1, 1, 1 at B=10; a straggler's 1)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_fednova_matches_niid_bench(rho):
    rng = np.random.default_rng(0)
    ups = _updates(rng, X, TAUS, NS)
    out, m = build("fednova", ctx(n=4, c=3), rho=rho).apply(X, ups, info(1, 4, range(4)))
    ref = niid_bench_server(X, [u.params for u in ups], TAUS, NS, rho)
    for k in X:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-12, atol=1e-14)
    assert m["steps"] == TAUS
    assert m["normalizer"] == pytest.approx([niid_bench_a_i(t, rho) for t in TAUS], rel=1e-14)
    p = np.array(NS) / sum(NS)
    assert m["weights"] == pytest.approx(list(p), rel=1e-14)
    assert m["tau_eff"] == pytest.approx(float(np.dot(p, [niid_bench_a_i(t, rho) for t in TAUS])), rel=1e-14)


def test_worked_example_by_hand():
    """Scalars, ρ = 0: p = (1/4, 3/4), τ = (2, 6): τ_eff = 5, x̂ = x + 5·(¼·(y₀−x)/2 + ¾·(y₁−x)/6)."""
    ups = [ClientUpdate(0, {"w": np.array([1.0])}, 10, metadata={"steps": 2}),
           ClientUpdate(1, {"w": np.array([3.0])}, 30, metadata={"steps": 6})]
    out, m = build("fednova", ctx(n=2, c=3), rho=0.0).apply({"w": np.zeros(1)}, ups, info(1, 2, [0, 1]))
    assert m["tau_eff"] == pytest.approx(5.0)
    assert out["w"][0] == pytest.approx(5 * (0.25 * 1 / 2 + 0.75 * 3 / 6))  # 3.125; FedAvg would give 2.5
    # equal steps: FedNova is FedAvg
    same = [ClientUpdate(c, u.params, u.num_examples, metadata={"steps": 4}) for c, u in enumerate(ups)]
    out, _ = build("fednova", ctx(n=2, c=3), rho=0.9).apply({"w": np.zeros(1)}, same, info(1, 2, [0, 1]))
    assert out["w"][0] == pytest.approx(0.25 * 1 + 0.75 * 3)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9, 0.99])
def test_normalizer_equals_the_authors_per_step_recursion(rho):
    for tau in range(1, 40):
        assert normalizer(tau, rho) == pytest.approx(jywa_normalizing_vec(tau, rho), rel=1e-12)
        assert normalizer(tau, rho) == pytest.approx(niid_bench_a_i(tau, rho), rel=1e-15)


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_normalizer_is_what_torch_sgd_moves_under_a_constant_gradient(rho):
    """τ steps of torch.optim.SGD(momentum=ρ) on the linear loss g·w move w by η·g·a(τ, ρ):
    a_i is the effective step count of fedagg's own client optimiser."""
    g, lr = torch.tensor([0.3, -2.0]), 0.05
    for tau in (1, 2, 5, 17):
        w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=rho)
        for _ in range(tau):
            opt.zero_grad()
            (g.double() * w).sum().backward()
            opt.step()
        moved = (-w.detach() / (lr * g.double())).numpy()
        np.testing.assert_allclose(moved, normalizer(tau, rho), rtol=1e-10)


def test_fednova_with_disco_matches_feddiscos_fednova():
    """ρ = 0 and τ_i = ⌊n_i/B⌋ (one epoch each, the steps FedDisco's code assumes): fedagg's
    FedNova+FedDisco is fednova_alg with args.disco=1 (KL to the uniform target, a=0.5, b=0.1)."""
    rng = np.random.default_rng(1)
    B = 10
    ns = [40, 120, 60, 200]
    hists = np.array([[40, 0, 0], [60, 60, 0], [20, 20, 20], [10, 90, 100]])
    taus = [n // B for n in ns]
    ups = _updates(rng, X, taus, ns, hists)
    out, m = build("fednova", ctx(n=4, c=3), rho=0.0, disco=True).apply(X, ups, info(1, 4, range(4)))
    d = feddisco_difference(hists.astype(np.float64), np.ones(3) / 3)
    freqs = feddisco_adjust(np.array(ns) / sum(ns), d, 0.5, 0.1)
    ref = feddisco_fednova(X, [u.params for u in ups], freqs, taus)
    for k in X:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-12, atol=1e-14)
    assert m["weights"] == pytest.approx(list(freqs), rel=1e-12)
    assert m["discrepancy"] == pytest.approx(list(d), rel=1e-12)
    assert m["disco_fallback"] == 0
    # with momentum the two differ: FedDisco's code keeps a_i = ⌊n_i/B⌋, fedagg's a_i is momentum-aware
    out9, _ = build("fednova", ctx(n=4, c=3), rho=0.9, disco=True).apply(X, ups, info(1, 4, range(4)))
    assert not np.allclose(out9["fc.weight"], ref["fc.weight"])


def _niid2(rng):
    ups = []
    for k in range(5):
        h = np.zeros(10, int)
        h[2 * k], h[2 * k + 1] = 400 + 10 * k, 400
        ups.append(upd(k, {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3)},
                       n=int(h.sum()), hist=h))
    ups.append(upd(5, {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3)}, n=830,
                   hist=np.full(10, 83)))
    return ups


@pytest.mark.parametrize("opts", [{}, {"metric": "l2", "a": 0.8, "b": 0.05},
                                  {"server_momentum": 0.9, "server_momentum_form": "ema"},
                                  {"server_opt": "adam"}])
def test_fedavg_with_disco_equals_feddisco_bit_for_bit(opts):
    rng = np.random.default_rng(2)
    x = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3)}
    nd = {"disco_" + k if k in ("metric", "a", "b") else k: v for k, v in opts.items()}
    ref = build("feddisco", ctx(n=6, c=10), **opts)
    mine = build("fedavg", ctx(n=6, c=10), disco=True, **nd)
    xa, xb = x, x
    for rnd in (1, 2, 3):  # several rounds: the server optimiser's state too
        ups = _niid2(rng)
        xa, ma = ref.apply(xa, ups, info(rnd, 6, range(6)))
        xb, mb = mine.apply(xb, ups, info(rnd, 6, range(6)))
        for k in x:
            assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), (rnd, k)
        assert ma == mb


def test_disco_off_changes_nothing():
    rng = np.random.default_rng(3)
    ups = _niid2(rng)
    x = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3)}
    a, ma = build("fedavg", ctx(n=6, c=10)).apply(x, ups, info(1, 6, range(6)))
    b, mb = build("fedavg", ctx(n=6, c=10), disco=False, disco_a=3.0).apply(x, ups, info(1, 6, range(6)))
    assert all(np.array_equal(a[k], b[k]) for k in x) and ma == mb and "discrepancy" not in ma
    # without disco no histogram is needed; with it, one is
    bare = [upd(u.client_id, u.params, n=u.num_examples) for u in ups]
    build("fedavg", ctx(n=6, c=10)).apply(x, bare, info(1, 6, range(6)))
    with pytest.raises(InvalidUpdate, match="needs each client's label_hist"):
        build("fedavg", ctx(n=6, c=10), disco=True).apply(x, bare, info(1, 6, range(6)))


def test_batchnorm_statistics_are_averaged_convexly_and_integers_taken_from_the_heaviest():
    x = {"w": np.zeros(2), "bn.running_var": np.ones(2), "bn.num_batches_tracked": np.array(5)}
    ups = [ClientUpdate(0, {"w": np.ones(2), "bn.running_var": np.full(2, 2.0),
                            "bn.num_batches_tracked": np.array(7)}, 10, metadata={"steps": 1}),
           ClientUpdate(1, {"w": np.ones(2), "bn.running_var": np.full(2, 4.0),
                            "bn.num_batches_tracked": np.array(50)}, 30, metadata={"steps": 20})]
    out, m = build("fednova", ctx(n=2, c=3), rho=0.0).apply(x, ups, info(1, 2, [0, 1]))
    assert out["bn.running_var"] == pytest.approx([0.25 * 2 + 0.75 * 4] * 2)
    assert int(out["bn.num_batches_tracked"]) == 50
    tau_eff = 0.25 * 1 + 0.75 * 20
    assert out["w"] == pytest.approx([tau_eff * (0.25 / 1 + 0.75 / 20)] * 2)  # > 1: not a convex combination


def test_replies_without_steps_are_refused_in_one_line():
    agg = build("fednova", ctx(n=2, c=3), rho=0.9)
    for meta, said in (({}, "none was sent"), ({"steps": 0}, "got 0"), ({"steps": True}, "got True")):
        u = ClientUpdate(1, {"w": np.ones(1)}, 10, metadata=meta)
        with pytest.raises(InvalidUpdate, match=f"client 1: fednova needs each reply's 'steps'.*{said}"):
            agg.apply({"w": np.zeros(1)}, [u], info(1, 2, [1]))


def test_bad_options():
    with pytest.raises(ValueError, match="momentum is unknown; pass rho="):
        build("fednova", ctx(n=2, c=3))
    assert build("fednova", ctx(n=2, c=3, client_momentum=0.9)).rho == 0.9  # the host's train.momentum
    assert build("fednova", ctx(n=2, c=3, client_momentum=0.9), rho=0.0).rho == 0.0
    with pytest.raises(ValueError, match=r"aggregator.rho=1.0 must be in \[0, 1\)"):
        build("fednova", ctx(n=2, c=3), rho=1.0)
    with pytest.raises(ValueError, match="disco_metric"):
        build("fedavg", ctx(n=2, c=3), disco=True, disco_metric="js")
    with pytest.raises(ValueError, match="aggregator.disco_target has 2 entries"):
        build("fednova", ctx(n=2, c=3), rho=0.0, disco=True, disco_target=[1, 1])
    with pytest.raises(TypeError, match="unknown option"):
        build("fedau", ctx(n=2, c=3), disco=True)


def test_state_round_trips_the_server_momentum():
    ups = [ClientUpdate(c, {"w": np.array([float(c + 1)])}, 10, metadata={"steps": c + 1}) for c in range(2)]
    a = build("fednova", ctx(n=2, c=3), rho=0.5, server_momentum=0.9)
    x1, _ = a.apply({"w": np.zeros(1)}, ups, info(1, 2, [0, 1]))
    b = build("fednova", ctx(n=2, c=3), rho=0.5, server_momentum=0.9)
    b.load_state_dict(a.state_dict())
    xa, _ = a.apply(x1, ups, info(2, 2, [0, 1]))
    xb, _ = b.apply(x1, ups, info(2, 2, [0, 1]))
    assert np.array_equal(xa["w"], xb["w"])
