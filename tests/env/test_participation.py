"""Participation patterns: rates, exact FedAU semantics, resume, validation."""
from __future__ import annotations

import numpy as np
import pytest

from fedagg.env.participation import available, build_participation, fedau_probs
from fedagg.seeding import rng

N = 40


def dists(n: int = N, c: int = 10, seed: int = 0) -> np.ndarray:
    return rng(seed, "test-dists").dirichlet(np.full(c, 0.3), n)


def run(p, rounds: int, start: int = 1) -> np.ndarray:
    return np.stack([p.available(t) for t in range(start, start + rounds)])


def test_registry():
    assert {"full", "uniform", "bernoulli", "markov", "cyclic", "trace"} <= set(available())
    with pytest.raises(ValueError, match="participation.name"):
        build_participation("sometimes", 5, 0)


def test_full_and_uniform_counts():
    assert run(build_participation("full", 7, 0), 3).all()
    u = build_participation("uniform", 50, 3, fraction=0.2)
    q = run(u, 200)
    assert np.all(q.sum(1) == 10)
    assert np.allclose(u.probs, 0.2)
    assert abs(q.mean() - 0.2) < 1e-12 and np.abs(q.mean(0) - 0.2).max() < 0.12
    assert np.array_equal(q[5], build_participation("uniform", 50, 3, fraction=0.2).available(6))
    assert run(build_participation("uniform", 5, 0, fraction=0.01), 2).sum(1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="participation.fraction"):
        build_participation("uniform", 5, 0, fraction=0.0)


def test_fedau_probs_formula():
    d = dists()
    p = fedau_probs(d, seed=4, p_bar=0.1, p_min=0.02, alpha=0.1)
    m = rng(4, "participation-m").dirichlet(np.full(10, 0.1))
    assert np.allclose(p, np.maximum(0.02, 10 * 0.1 * d @ m))
    assert p.min() >= 0.02 and p.max() <= 1.0
    b = build_participation("bernoulli", N, 4, d)
    assert np.allclose(b.probs, p)


def test_bernoulli_empirical_rate_and_purity():
    d = dists()
    b = build_participation("bernoulli", N, 1, d, p_min=0.05)
    q = run(b, 4000)
    tol = 4 * np.sqrt(b.probs * (1 - b.probs) / 4000) + 1e-3
    assert np.all(np.abs(q.mean(0) - b.probs) < tol)
    # pure function of (seed, round, client): any order, fresh object, same answer
    fresh = build_participation("bernoulli", N, 1, d, p_min=0.05)
    assert np.array_equal(fresh.available(3000), q[2999]) and np.array_equal(fresh.available(7), q[6])
    other = build_participation("bernoulli", N, 2, d, p_min=0.05, probs=list(b.probs))
    assert not np.array_equal(run(other, 50), q[:50])


def test_probs_override_and_validation():
    b = build_participation("bernoulli", 4, 0, probs=[0.1, 0.2, 0.3, 1.0])
    assert b.probs.tolist() == [0.1, 0.2, 0.3, 1.0]
    h = build_participation("markov", 4, 0, homogeneous_p=0.5)
    assert np.allclose(h.probs, 0.5)
    for kw, key in [
        ({"probs": [0.1, 0.0, 0.3, 0.4]}, "participation.probs"),
        ({"probs": [0.1, 0.2, 1.3, 0.4]}, "participation.probs"),
        ({"probs": [0.5]}, "participation.probs"),
        ({"homogeneous_p": 1.5}, "participation.homogeneous_p"),
        ({"p_min": 0.0}, "participation.p_min"),
        ({"p_bar": 2.0}, "participation.p_bar"),
        ({"alpha": -1.0}, "participation.alpha"),
    ]:
        with pytest.raises(ValueError, match=key):
            build_participation("bernoulli", 4, 0, dists(4), **kw)
    with pytest.raises(ValueError, match="label_dists"):
        build_participation("cyclic", 4, 0)
    with pytest.raises(ValueError, match="participation.a"):
        build_participation("markov", 4, 0, homogeneous_p=0.5, a=0.0)
    with pytest.raises(ValueError, match="participation.L"):
        build_participation("cyclic", 4, 0, homogeneous_p=0.5, L=0)


def test_markov_stationary_rate_and_transitions():
    probs = np.linspace(0.05, 0.9, 12)
    mk = build_participation("markov", 12, 0, probs=list(probs), a=0.05)
    # b = a(1/p - 1), capped: a <- a/b, b <- 1
    b = 0.05 * (1 / probs - 1)
    a = np.where(b > 1, 0.05 / b, 0.05)
    assert np.allclose(mk.to_inactive, np.minimum(b, 1)) and np.allclose(mk.to_active, a)
    assert np.allclose(mk.to_active / (mk.to_active + mk.to_inactive), probs)  # stationary p
    q = run(mk, 20000)
    assert np.all(np.abs(q.mean(0) - probs) < 0.08), q.mean(0) - probs
    # sticky: with a = 0.05 the chain switches rarely compared with Bernoulli
    switches = np.mean(q[1:] != q[:-1])
    assert switches < 0.1


def test_markov_resume_is_exact():
    d = dists()
    full = build_participation("markov", N, 5, d, p_min=0.1)
    ref = run(full, 20)
    first = build_participation("markov", N, 5, d, p_min=0.1)
    run(first, 10)
    state = first.state_dict()
    resumed = build_participation("markov", N, 5, d, p_min=0.1)
    resumed.load_state_dict(state)
    assert np.array_equal(run(resumed, 10, start=11), ref[10:])
    assert np.array_equal(resumed.available(20), ref[19])  # asking the same round again
    with pytest.raises(ValueError, match="sequential"):
        resumed.available(25)


def test_cyclic_exact_square_wave():
    probs = [0.02, 0.1, 0.25, 0.5, 0.735, 1.0]
    cy = build_participation("cyclic", 6, 3, probs=probs, L=100)
    A = np.maximum(1, np.round(100 * np.array(probs)).astype(int))
    assert cy.active_rounds.tolist() == A.tolist()  # np.round half to even: 73.5 -> 74, 2 -> 2
    assert cy.inactive_rounds.tolist() == np.maximum(1, 100 - A).tolist()
    phase = [rng(3, "participation", n).integers(cy.inactive_rounds[n]) for n in range(6)]
    q = run(cy, 600)
    for n in range(6):
        a, b = cy.active_rounds[n], cy.inactive_rounds[n]
        # starts inactive for `phase` rounds, then A on / B off forever
        assert not q[: phase[n], n].any() and q[phase[n] : phase[n] + a, n].all()
        period = a + b
        for s in range(phase[n], 600 - period, period // 3 + 1):
            assert q[s : s + period, n].sum() == a
    st = cy.state_dict()
    again = build_participation("cyclic", 6, 3, probs=probs, L=100)
    again.load_state_dict(st)
    assert np.array_equal(run(again, 30, start=601), run(cy, 30, start=601))


def test_cyclic_reference_loop():
    """Literal transcription of FedAU's WorkerSampler.cyclic_update."""
    cy = build_participation("cyclic", 3, 9, probs=[0.3, 0.05, 0.6], L=20)
    q = run(cy, 100)
    for n in range(3):
        A, B = int(cy.active_rounds[n]), int(cy.inactive_rounds[n])
        active, r = False, int(rng(9, "participation", n).integers(B))
        for t in range(100):
            if r == 0:
                active = not active
                r = A if active else B
            r -= 1
            assert q[t, n] == active


def test_trace(tmp_path):
    f = tmp_path / "trace.csv"
    f.write_text("round,client\n1,0\n1,2\n2,1\n# comment\n4,0\n")
    tr = build_participation("trace", 3, 0, path=str(f))
    q = run(tr, 5)
    assert q.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert np.allclose(tr.probs, [2 / 4, 1 / 4, 1 / 4])
    cyc = build_participation("trace", 3, 0, path=str(f), cycle=True)
    assert np.array_equal(cyc.available(5), q[0])
    f.write_text("1,0\n2,3\n")
    with pytest.raises(ValueError, match="participation.path"):
        build_participation("trace", 3, 0, path=str(f))
    with pytest.raises(ValueError, match="participation.path"):
        build_participation("trace", 3, 0)
