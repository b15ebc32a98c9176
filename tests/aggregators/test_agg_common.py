"""Properties every aggregator must have: state_dict round trip, weight sums,
rejection of bad input, and FedAvg as the sample-weighted mean."""
from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from aggtools import ctx, info, upd

from fedagg.aggregators import available, build
from fedagg.aggregators.base import is_float
from fedagg.seeding import rng

N, C = 4, 3


def model_fn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


TEMPLATE = {k: v.detach().numpy().copy() for k, v in model_fn().state_dict().items()}


def init_params(cid):
    g = rng(7, "test-init", cid)
    return {k: (v + g.normal(size=v.shape).astype(v.dtype) if is_float(v) else v.copy()) for k, v in TEMPLATE.items()}


def make_ctx():
    g = rng(0, "test-proxy")
    x = g.normal(size=(40, 3)).astype(np.float32)
    return ctx(
        n=N, c=C, seed=3, model_fn=model_fn, init_params_fn=init_params, proxy_data=(x, (x[:, 0] > 0).astype(int)),
        oracle_participation_probs=np.array([0.2, 0.5, 0.8, 1.0]),
    )


# name -> options; stateful rules use options that make state matter
CASES = {
    "fedavg": {"server_momentum": 0.9},
    "fedau": {"K": 5},
    "avg_participating": {},
    "avg_all": {"server_lr": 2.0},
    "mifa": {},
    "fedvarp": {},
    "known_prob": {},
    "feddisco": {"server_momentum": 0.5, "server_lr": 0.7},
    "ida": {"granularity": "layer"},
    "fedlaw": {"server_epochs": 2, "batch_size": 16},
    "fedlaw_swa": {"server_epochs": 16, "batch_size": 16},  # 8 epochs per stage: epochs 6, 7 averaged
    "gossip": {"topology": "ring", "mix": "half_self"},
    "fednova": {"rho": 0.9, "server_momentum": 0.9, "disco": True},
    "scaffold": {"momentum": 0.5},  # SCAFFOLD-M: both the control variate and the momentum are state
    "fedavg_m": {"momentum": 0.5},
    "feddyn": {"alpha": 0.1},
    "moon": {"server_momentum": 0.9, "mu": 1.0},  # the server's state: FedAvg's (the clients keep theirs)
}
STATEFUL = {"fedavg", "fedau", "mifa", "fedvarp", "feddisco", "gossip", "fednova", "feddyn", "moon"}
# SCAFFOLD's c reaches the model through the clients (what they are sent); FedAvg-M's g is each round's mean
# direction anew (its momentum accumulates in the clients' steps), so a given round's updates fix it
SENT_STATE = {"scaffold"}
SUMS_TO_ONE = {"fedavg", "avg_participating", "fedvarp", "feddisco", "ida", "fedlaw", "fedlaw_swa", "fednova",
               "scaffold", "fedavg_m", "feddyn", "moon"}
PATTERN = [(1, 2), (0,), (0, 1, 3)]


def test_cases_cover_every_registered_aggregator():
    assert set(CASES) == set(available())


def updates_for(agg, x, rnd, cids):
    ups = []
    for c in cids:
        base = agg.params_for(c, x)
        g = rng(11, "test-upd", rnd, c)
        p = {
            k: (v + g.normal(scale=0.1, size=v.shape).astype(v.dtype) if is_float(v) else v + c)
            for k, v in base.items()
        }
        p = {k: np.asarray(v) for k, v in p.items()}
        ups.append(upd(c, p, n=int(g.integers(5, 50)), hist=g.integers(1, 20, size=C), acc=float(g.uniform(0.3, 0.9)),
                       steps=int(g.integers(1, 30))))  # drawn last: the other rules' inputs are as they were
        if agg.needs_fedagg_client:  # what fedagg's ClientApp replies for SCAFFOLD / FedAvg-M / FedDyn
            e = rng(12, "test-extras", rnd, c)
            extras = {"lr_steps": np.array([float(e.uniform(0.5, 3.0))])}
            extras.update({"dc." + k: e.normal(scale=0.1, size=v.shape).astype(v.dtype)
                           for k, v in p.items() if is_float(v) and not k.endswith(("running_mean", "running_var"))})
            ups[-1] = replace(ups[-1], extras=extras)
    return ups


def run_round(agg, x, rnd, cids, ups=None):
    ups = ups if ups is not None else updates_for(agg, x, rnd, cids)
    return agg.apply(x, ups, info(rnd, N, cids))


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip(name):
    c = make_ctx()
    a = build(name, c, **CASES[name])
    x = {k: v.copy() for k, v in TEMPLATE.items()}
    for rnd, cids in enumerate(PATTERN[:-1], start=1):
        x, _ = run_round(a, x, rnd, list(cids))
    saved = pickle.loads(pickle.dumps(a.state_dict()))
    b = build(name, c, **CASES[name])
    b.load_state_dict(saved)
    fresh = build(name, c, **CASES[name])
    rnd, cids = len(PATTERN), list(PATTERN[-1])
    ups = updates_for(a, x, rnd, cids)
    out_a, m_a = run_round(a, x, rnd, cids, ups)
    out_b, m_b = run_round(b, x, rnd, cids, ups)
    assert set(out_a) == set(TEMPLATE)
    for k in out_a:
        np.testing.assert_array_equal(out_a[k], out_b[k], err_msg=k)
        assert out_a[k].dtype == TEMPLATE[k].dtype and out_a[k].shape == TEMPLATE[k].shape
        assert np.all(np.isfinite(out_a[k]))
    assert m_a == m_b
    if name in STATEFUL:  # the test can fail: without the state the result differs
        out_f, _ = run_round(fresh, x, rnd, cids, ups)
        assert any(not np.array_equal(out_a[k], out_f[k]) for k in out_a)
    if name in SENT_STATE:
        sa, sb = a.server_arrays(out_a), b.server_arrays(out_b)
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
        run_round(fresh, x, rnd, cids, ups)
        sf = fresh.server_arrays(out_a)
        assert any(not np.array_equal(sa[k], sf[k]) for k in sa)


@pytest.mark.parametrize("name", sorted(CASES))
def test_weight_sums(name):
    a = build(name, make_ctx(), **CASES[name])
    x = {k: v.copy() for k, v in TEMPLATE.items()}
    for rnd, cids in enumerate(PATTERN, start=1):
        x, m = run_round(a, x, rnd, list(cids))
        if name in SUMS_TO_ONE:
            assert sum(m["weights"]) == pytest.approx(1.0)
            assert all(w >= 0 for w in m["weights"])
            assert m["weight_clients"] == sorted(cids)
    if name == "avg_all":
        assert sum(m["weights"]) == pytest.approx(len(PATTERN[-1]) / N)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejects_mismatched_shapes_and_nonfinite_naming_the_client(name):
    a = build(name, make_ctx(), **CASES[name])
    x = {k: v.copy() for k, v in TEMPLATE.items()}
    ups = updates_for(a, x, 1, [0, 2])
    bad = dict(ups[1].params)
    bad["0.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="client 2"):
        a.apply(x, [ups[0], upd(2, bad, hist=ups[1].label_hist, acc=0.5)], info(1, N, [0, 2]))
    bad = dict(ups[1].params)
    bad["0.bias"] = np.array([np.nan, 0.0], np.float32)
    with pytest.raises(ValueError, match="client 2"):
        a.apply(x, [ups[0], upd(2, bad, hist=ups[1].label_hist, acc=0.5)], info(1, N, [0, 2]))


def test_fedavg_is_the_sample_weighted_mean():
    g = rng(5, "test-fedavg")
    ups = [upd(c, {"w": g.normal(size=(2, 3)), "b": g.normal(size=3)}, n=n) for c, n in ((2, 10), (0, 30), (1, 60))]
    x = {"w": np.zeros((2, 3)), "b": np.zeros(3)}
    out, m = build("fedavg", ctx(n=3)).apply(x, ups, info(1, 3, [0, 1, 2]))
    for k in ("w", "b"):
        expect = (10 * ups[0].params[k] + 30 * ups[1].params[k] + 60 * ups[2].params[k]) / 100
        np.testing.assert_allclose(out[k], expect)
    assert m["weight_clients"] == [0, 1, 2] and m["weights"] == pytest.approx([0.3, 0.6, 0.1])
