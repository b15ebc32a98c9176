"""Compute heterogeneity and faults: rates, purity, seeds, validation."""
from __future__ import annotations

import numpy as np
import pytest

from fedagg.env.heterogeneity import available, build_heterogeneity

ROUNDS, N = 150, 20


def plans(h, rounds=ROUNDS, n=N):
    return [[h.plan(t, c) for c in range(n)] for t in range(1, rounds + 1)]


def test_registry_and_none():
    assert {"none", "epochs", "stragglers", "dropouts", "crashes"} <= set(available())
    assert build_heterogeneity("none", 3, 0).plan(1, 2) == {}
    with pytest.raises(ValueError, match="heterogeneity.name"):
        build_heterogeneity("gremlins", 3, 0)


@pytest.mark.parametrize("name,fault", [("dropouts", "dropout"), ("crashes", "crash")])
def test_fault_rates(name, fault):
    h = build_heterogeneity(name, N, 0, rate=0.2)
    ps = [p for row in plans(h) for p in row]
    rate = np.mean([p.get("fault") == fault for p in ps])
    assert abs(rate - 0.2) < 0.03
    assert all(p in ({}, {"fault": fault}) for p in ps)


def test_stragglers_partial_and_drop():
    h = build_heterogeneity("stragglers", N, 1, rate=0.3, mode="partial", work_min=0.2, work_max=0.6)
    ps = [p for row in plans(h) for p in row]
    w = np.array([p["work_fraction"] for p in ps if p])
    assert abs(len(w) / len(ps) - 0.3) < 0.03
    assert np.all((w >= 0.2) & (w <= 0.6)) and w.std() > 0.05
    d = build_heterogeneity("stragglers", N, 1, rate=0.3, mode="drop")
    pd_ = [p for row in plans(d) for p in row]
    assert abs(np.mean([p.get("fault") == "deadline" for p in pd_]) - 0.3) < 0.03
    # the same (seed, round, client) is slow in both modes
    assert [bool(p) for p in ps] == [bool(p) for p in pd_]


def test_epochs_per_client_and_per_round():
    h = build_heterogeneity("epochs", N, 0, min=1, max=4, per="client")
    e = np.array([[p["epochs"] for p in row] for row in plans(h, 20)])
    assert np.all(e == e[0]) and set(e[0]) <= {1, 2, 3, 4} and len(set(e[0])) > 1
    r = build_heterogeneity("epochs", N, 0, min=2, max=3, per="round")
    e = np.array([[p["epochs"] for p in row] for row in plans(r, 100)])
    assert set(np.unique(e)) == {2, 3} and abs((e == 3).mean() - 0.5) < 0.05
    assert not np.all(e == e[0])


def test_pure_same_seed_same_plans_order_independent():
    a = build_heterogeneity("stragglers", N, 7, rate=0.4)
    b = build_heterogeneity("stragglers", N, 7, rate=0.4)
    fwd = plans(a, 30)
    # another object, reverse order of rounds and clients (other worker count / schedule)
    rev = {(t, c): b.plan(t, c) for t in range(30, 0, -1) for c in range(N - 1, -1, -1)}
    assert all(fwd[t - 1][c] == rev[(t, c)] for t in range(1, 31) for c in range(N))
    other = build_heterogeneity("stragglers", N, 8, rate=0.4)
    assert plans(other, 30) != fwd


def test_validation_names_the_key():
    for name, kw, key in [
        ("dropouts", {"rate": 1.5}, "heterogeneity.rate"),
        ("crashes", {"rate": -0.1}, "heterogeneity.rate"),
        ("stragglers", {"mode": "slow"}, "heterogeneity.mode"),
        ("stragglers", {"work_min": 0.0}, "heterogeneity.work_min"),
        ("stragglers", {"work_max": 1.0}, "heterogeneity.work_m"),
        ("epochs", {"min": 0}, "heterogeneity.min"),
        ("epochs", {"min": 3, "max": 2}, "heterogeneity.max"),
        ("epochs", {"per": "day"}, "heterogeneity.per"),
        ("crashes", {"speed": 2}, "heterogeneity"),
    ]:
        with pytest.raises(ValueError, match=key):
            build_heterogeneity(name, 4, 0, **kw)
    with pytest.raises(ValueError, match="client"):
        build_heterogeneity("crashes", 4, 0).plan(1, 4)
