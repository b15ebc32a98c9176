"""FedLAW (ALGORITHMS.md §4) on tiny torch models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aggtools import ctx, info, upd
from fedagg.aggregators import build
from fedagg.seeding import rng, torch_generator


def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 3)


def bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def toy(inflate=4.0, n_proxy=256, seed=0):
    """Proxy labels drawn from softmax(x W*ᵀ); clients hold inflated copies of
    W*, so their logits are over-confident and shrinking (γ < 1) helps."""
    g = rng(seed, "test-fedlaw")
    W = g.normal(size=(3, 5))
    x = g.normal(size=(n_proxy, 5))  # float64 on purpose: cast to the model dtype
    logits = x @ W.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([g.choice(3, p=row) for row in p])
    ups = [
        upd(k, {"weight": (inflate * W + g.normal(scale=0.05, size=W.shape)).astype(np.float32),
                "bias": np.zeros(3, np.float32)}, n=n)
        for k, n in enumerate((10, 20, 30))
    ]
    return (x, y), ups


def fedlaw(proxy, model_fn=linear, seed=0, **opts):
    return build("fedlaw", ctx(n=3, c=3, seed=seed, model_fn=model_fn, proxy_data=proxy), **opts)


def fedavg_of(ups, key):
    n = np.array([u.num_examples for u in ups], float)
    return sum(w * u.params[key].astype(np.float64) for w, u in zip(n / n.sum(), ups))


def test_zero_server_epochs_is_fedavg_of_learnable_params():
    proxy, ups = toy()
    out, m = fedlaw(proxy, server_epochs=0).apply(state(linear()), ups, info(1, 3, range(3)))
    for k in ("weight", "bias"):
        np.testing.assert_allclose(out[k], fedavg_of(ups, k), rtol=1e-6, atol=1e-7)
    assert m["fedlaw_gamma"] == 1.0
    assert m["weights"] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    # quad starts from uniform λ, γ = 1
    out, m = fedlaw(proxy, server_epochs=0, param="quad").apply(state(linear()), ups, info(1, 3, range(3)))
    assert m["weights"] == pytest.approx([1 / 3] * 3)
    np.testing.assert_allclose(out["weight"], np.mean([u.params["weight"] for u in ups], 0), rtol=1e-6)


def test_first_inner_step_evaluates_the_fedavg_model():
    proxy, ups = toy()
    _, m = fedlaw(proxy, server_epochs=1, batch_size=1000).apply(state(linear()), ups, info(1, 3, range(3)))
    lin = linear()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(fedavg_of(ups, "weight")))
        lin.bias.copy_(torch.tensor(fedavg_of(ups, "bias")))
        ce = torch.nn.functional.cross_entropy(lin(torch.tensor(proxy[0]).float()), torch.tensor(proxy[1]))
    assert m["fedlaw_proxy_loss_first"] == pytest.approx(float(ce), rel=1e-5)


def test_learns_to_shrink_when_weights_are_inflated():
    proxy, ups = toy(inflate=4.0)
    out, m = fedlaw(proxy, server_lr=0.05).apply(state(linear()), ups, info(1, 3, range(3)))
    gamma, lam = m["fedlaw_gamma"], np.array(m["weights"])
    assert gamma < 0.8
    assert m["fedlaw_proxy_loss_last"] < m["fedlaw_proxy_loss_first"]
    assert lam.sum() == pytest.approx(1.0)
    expect = gamma * sum(l * u.params["weight"].astype(np.float64) for l, u in zip(lam, ups))
    np.testing.assert_allclose(out["weight"], expect, rtol=1e-5)
    # control: clients already at the right scale -> γ stays near 1
    proxy, ups = toy(inflate=1.0)
    _, m = fedlaw(proxy, server_lr=0.05).apply(state(linear()), ups, info(1, 3, range(3)))
    assert m["fedlaw_gamma"] > gamma + 0.1


def test_single_client_learns_gamma_only():
    proxy, ups = toy()
    _, m = fedlaw(proxy, server_lr=0.05).apply(state(linear()), ups[:1], info(1, 3, [0]))
    assert m["weights"] == [1.0] and m["fedlaw_gamma"] < 1.0


def test_bn_buffers_come_from_server_forward_passes():
    proxy, _ = toy()
    g = state(bn_model())
    g["1.num_batches_tracked"] = np.array(17)
    gen = torch_generator(0, "test-clients")
    ups = []
    for k in range(3):
        p = {kk: v.copy() for kk, v in g.items()}
        for kk in ("0.weight", "3.weight"):
            p[kk] = p[kk] + 0.1 * torch.randn(p[kk].shape, generator=gen).numpy()
        p["1.running_mean"] = np.full(4, 100.0 + k, np.float32)  # client stats: never aggregated
        p["1.num_batches_tracked"] = np.array(1000 + k)
        ups.append(upd(k, p, n=10))
    out, _ = fedlaw(proxy, model_fn=bn_model, server_epochs=0).apply(g, ups, info(1, 3, range(3)))
    np.testing.assert_array_equal(out["1.running_mean"], g["1.running_mean"])
    out, _ = fedlaw(proxy, model_fn=bn_model, server_epochs=2).apply(g, ups, info(1, 3, range(3)))
    assert not np.allclose(out["1.running_mean"], g["1.running_mean"])  # re-estimated on proxy data
    assert np.all(np.abs(out["1.running_mean"]) < 10)  # not the clients' (100+)
    assert int(out["1.num_batches_tracked"]) == 17  # integer buffer: the global's
    assert out["1.running_var"].dtype == np.float32


def test_minibatch_order_is_seeded():
    proxy, ups = toy()
    runs = [
        fedlaw(proxy, seed=s, batch_size=64).apply(state(linear()), ups, info(1, 3, range(3)))[0]["weight"]
        for s in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_needs_proxy_and_model():
    proxy, _ = toy()
    with pytest.raises(ValueError, match="proxy_data"):
        build("fedlaw", ctx(n=3, model_fn=linear))
    with pytest.raises(ValueError, match="model_fn"):
        build("fedlaw", ctx(n=3, proxy_data=proxy))
    from fedagg.aggregators.fedlaw import FedLAW

    assert FedLAW.needs_proxy is True
    assert fedlaw(proxy, proxy_fraction=0.05).proxy_fraction == 0.05
