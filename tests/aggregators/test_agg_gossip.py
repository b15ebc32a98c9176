"""Variance-corrected gossip averaging (docs/algorithms.md §7)."""
from __future__ import annotations

import numpy as np
import pytest
from aggtools import ctx, info, upd

from fedagg.aggregators import build
from fedagg.aggregators.gossip import build_topology, variance_correct
from fedagg.seeding import rng


def init_fn(scale=1.0):
    def f(cid):
        g = rng(123, "test-init", cid)
        return {
            "fc.weight": g.normal(scale=scale, size=(6, 5)),
            "fc.bias": g.normal(scale=scale, size=6),
            "bn.running_mean": g.normal(size=6),
            "bn.num_batches_tracked": np.array(cid),
        }

    return f


def make(n=4, **opts):
    return build("gossip", ctx(n=n, init_params_fn=init_fn()), **opts)


def trained(agg, cids, shift=0.0):
    """Pretend nodes trained: their model + shift."""
    ups = []
    for c in cids:
        p = agg.params_for(c, None)
        ups.append(upd(c, {k: (v + shift if v.dtype.kind == "f" else v) for k, v in p.items()}))
    return ups


def test_correction_gives_exact_target_variance_and_keeps_mean():
    g = rng(0, "test-vc")
    avg = g.normal(loc=0.3, scale=0.2, size=(7, 9))
    out = variance_correct(avg, 1.7)
    assert np.var(out) == pytest.approx(1.7, rel=1e-12)
    assert out.mean() == pytest.approx(avg.mean(), abs=1e-12)
    assert np.corrcoef(out.ravel(), avg.ravel())[0, 1] == pytest.approx(1.0)  # shape kept
    const = np.full((3, 3), 2.0)
    np.testing.assert_array_equal(variance_correct(const, 5.0), const)  # std 0: skipped


def test_node_average_is_corrected_to_mean_received_variance():
    agg = make(4, topology="complete")
    before = {c: agg.params_for(c, None) for c in range(4)}
    agg.apply(before[0], trained(agg, range(4)), info(1, 4, range(4)))
    k0 = agg.nodes[0]["fc.weight"]
    recv = [before[j]["fc.weight"] for j in (1, 2, 3)]
    assert np.var(k0) == pytest.approx(np.mean([np.var(r) for r in recv]), rel=1e-10)
    assert k0.mean() == pytest.approx(np.mean(recv), abs=1e-12)
    # correct='weights': the bias and BN buffers are averaged, not rescaled
    np.testing.assert_allclose(agg.nodes[0]["fc.bias"], np.mean([before[j]["fc.bias"] for j in (1, 2, 3)], axis=0))
    np.testing.assert_allclose(
        agg.nodes[0]["bn.running_mean"], np.mean([before[j]["bn.running_mean"] for j in (1, 2, 3)], axis=0)
    )
    assert int(agg.nodes[0]["bn.num_batches_tracked"]) == 0  # integers: the node's own
    # correct='all_float': the bias is rescaled too
    agg = make(4, topology="complete", correct="all_float")
    agg.apply(before[0], trained(agg, range(4)), info(1, 4, range(4)))
    assert np.var(agg.nodes[0]["fc.bias"]) == pytest.approx(
        np.mean([np.var(before[j]["fc.bias"]) for j in (1, 2, 3)]), rel=1e-10
    )


def test_half_self_mix():
    agg = make(4, topology="complete", mix="half_self", variance_correction=False)
    before = {c: agg.params_for(c, None) for c in range(4)}
    agg.apply(before[0], trained(agg, range(4)), info(1, 4, range(4)))
    others = np.mean([before[j]["fc.weight"] for j in (1, 2, 3)], axis=0)
    np.testing.assert_allclose(agg.nodes[0]["fc.weight"], 0.5 * before[0]["fc.weight"] + 0.5 * others)
    agg = make(4, topology="complete", mix="half_self")
    agg.apply(before[0], trained(agg, range(4)), info(1, 4, range(4)))
    target = np.mean([np.var(before[j]["fc.weight"]) for j in (1, 2, 3)])  # own not included
    assert np.var(agg.nodes[0]["fc.weight"]) == pytest.approx(target, rel=1e-10)


def test_partial_participation_on_a_ring():
    agg = make(5, topology="ring")
    assert agg.neighbours[0] == [1, 4] and agg.neighbours[2] == [1, 3]
    before = {c: agg.params_for(c, None) for c in range(5)}
    out, m = agg.apply(before[0], trained(agg, [2], shift=1.0), info(1, 5, [2]))
    t2 = before[2]["fc.weight"] + 1.0
    # nodes 1 and 3 receive only node 2's trained model: the average is that model
    np.testing.assert_allclose(agg.nodes[1]["fc.weight"], t2)
    np.testing.assert_allclose(agg.nodes[3]["fc.weight"], t2)
    # node 2's neighbours did not reply: it keeps its own trained model
    np.testing.assert_allclose(agg.nodes[2]["fc.weight"], t2)
    # nodes 0 and 4 received nothing and did not train: unchanged
    np.testing.assert_array_equal(agg.nodes[0]["fc.weight"], before[0]["fc.weight"])
    assert m["num_averaged"] == 2
    # "global" = mean of the node models; consensus distance by hand
    mean_w = np.mean([agg.nodes[i]["fc.weight"] for i in range(5)], axis=0)
    np.testing.assert_allclose(out["fc.weight"], mean_w)
    learn = ("fc.weight", "fc.bias")
    mean = {k: np.mean([agg.nodes[i][k] for i in range(5)], axis=0) for k in learn}
    cd = np.mean([np.sqrt(sum(np.sum((agg.nodes[i][k] - mean[k]) ** 2) for k in learn)) for i in range(5)])
    assert m["consensus_distance"] == pytest.approx(cd)
    assert m["layer_variance"] == pytest.approx(np.var(mean_w))


def test_variance_vanishes_without_correction_and_not_with_it():
    n = 16
    res = {}
    for vc in (False, True):
        agg = make(n, topology="complete", variance_correction=vc)
        init_var = np.mean([np.var(agg.params_for(c, None)["fc.weight"]) for c in range(n)])
        _, m = agg.apply(agg.params_for(0, None), trained(agg, range(n)), info(1, n, range(n)))
        res[vc] = m["node_layer_variance"] / init_var
    assert res[False] < 0.2  # ≈ 1/15: the mean of 15 independent inits
    assert res[True] == pytest.approx(1.0, abs=0.05)


def test_init_modes():
    agg = make(3)
    np.testing.assert_array_equal(agg.params_for(2, None)["fc.weight"], init_fn()(2)["fc.weight"])
    assert not np.allclose(agg.params_for(1, None)["fc.weight"], agg.params_for(2, None)["fc.weight"])
    g = init_fn()(99)
    agg = build("gossip", ctx(n=3), independent_init=False)
    np.testing.assert_array_equal(agg.params_for(1, g)["fc.weight"], g["fc.weight"])
    with pytest.raises(ValueError, match="init_params_fn"):
        build("gossip", ctx(n=3))


def test_topologies_and_refusal_of_isolated_nodes():
    a = build_topology(10, "k_regular", seed=3, degree=3 + 1)
    assert all(len(nb) == 4 for nb in a)
    assert a == build_topology(10, "k_regular", seed=3, degree=4)  # seeded
    assert all(len(nb) == 9 for nb in build_topology(10, "complete", seed=0))
    er = [build_topology(30, "erdos_renyi", seed=s, p=0.5) for s in (0, 0, 1)]
    assert er[0] == er[1] and er[0] != er[2]
    with pytest.raises(ValueError, match="without neighbours"):
        build_topology(10, "erdos_renyi", seed=0, p=0.0)
    with pytest.raises(ValueError, match="gossip needs at least 2 nodes.*set num_clients=2 or more"):
        make(1, topology="ring")  # one node: the fix is more nodes, not another topology option
    with pytest.raises(ValueError, match="degree"):
        build_topology(5, "k_regular", seed=0, degree=3)  # n·degree odd
    with pytest.raises(ValueError, match="topology"):
        make(4, topology="star")


def test_rejects_mismatched_update_naming_the_client():
    agg = make(3)
    ups = trained(agg, [0, 1])
    bad = dict(ups[1].params)
    bad["fc.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="client 1"):
        agg.apply(ups[0].params, [ups[0], upd(1, bad)], info(1, 3, [0, 1]))
