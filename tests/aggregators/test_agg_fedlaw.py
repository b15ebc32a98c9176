"""FedLAW and its SWA variant (docs/algorithms.md) on tiny torch models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from aggtools import ctx, info, upd

from fedagg.aggregators import build
from fedagg.aggregators.fedlaw import step_lr, swa_stage_lr
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
    expect = gamma * sum(w * u.params["weight"].astype(np.float64) for w, u in zip(lam, ups))
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


# -- parity with the official code -------------------------------------------------
def test_official_server_lr_per_dataset():
    proxy, _ = toy()
    assert fedlaw(proxy).server_lr == 0.005  # no dataset named: every dataset but CIFAR-10
    def mk(ds, **o):
        return build("fedlaw", ctx(n=3, c=3, model_fn=linear, proxy_data=proxy, dataset=ds), **o)

    assert mk("cifar10").server_lr == 0.01
    assert mk("mnist").server_lr == mk("cifar100").server_lr == 0.005
    assert mk("cifar10", server_lr=0.2).server_lr == 0.2  # an explicit value wins


def test_step_lr_and_swa_schedules_worked_numbers():
    # StepLR(20, 0.5) stepped per epoch
    assert [step_lr(0.01, e) for e in (0, 19, 20, 39, 40)] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    # SWA stage 1 (swa_start 5): cosine T_max=100 for epochs 0..6, then SWALR towards 0.05 over 10 epochs
    L6 = 0.01 * (1 + math.cos(6 * math.pi / 100)) / 2  # 0.0099114
    a1 = (1 - math.cos(math.pi / 10)) / 2  # 0.0244717
    got = [swa_stage_lr(0.01, e, 5, 0.05) for e in (0, 3, 6, 7, 16, 30)]
    assert got == pytest.approx([0.01, 0.01 * (1 + math.cos(0.03 * math.pi)) / 2, L6, 0.05 * a1 + L6 * (1 - a1), 0.05, 0.05])
    assert L6 == pytest.approx(0.0099114, abs=1e-7) and got[3] == pytest.approx(0.0108925, abs=1e-7)


def test_swa_schedule_equals_torchs_chained_schedulers():
    """The official construction: CosineAnnealingLR(T_max=100), then SWALR(swa_lr=0.05)
    on the same optimiser; SWALR steps after epochs > 5, the cosine one before."""
    from torch.optim.lr_scheduler import CosineAnnealingLR
    from torch.optim.swa_utils import SWALR

    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.005)
    cos, swa = CosineAnnealingLR(opt, T_max=100), SWALR(opt, swa_lr=0.05)
    for e in range(25):
        assert opt.param_groups[0]["lr"] == pytest.approx(swa_stage_lr(0.005, e, 5, 0.05), rel=1e-12)
        opt.step()
        (swa if e > 5 else cos).step()


def reference_fedlaw(agg, ups, rnd, epochs):
    """The official loop, written from its description: one optimizee vector
    [u..., g], Adam(betas 0.5/0.999), torch's StepLR(20, 0.5) stepped per
    epoch, every minibatch of the epoch's order kept."""
    W = torch.tensor(np.stack([u.params["weight"] for u in ups]), dtype=torch.float64)
    b = torch.tensor(np.stack([u.params["bias"] for u in ups]), dtype=torch.float64)
    n = np.array([u.num_examples for u in ups], float)
    z = torch.tensor(list(np.log(n / n.sum())) + [0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([z], lr=agg.server_lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    x, y = agg.proxy_x.double(), agg.proxy_y
    for order in agg._batches(rnd, epochs, has_bn=False):
        for idx in order:
            c = torch.exp(z[-1]) * torch.softmax(z[:-1], 0)
            w, bb = torch.tensordot(c, W, 1), torch.tensordot(c, b, 1)
            loss = torch.nn.functional.cross_entropy(x[idx] @ w.T + bb, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        return torch.softmax(z[:-1], 0).numpy(), float(torch.exp(z[-1]))


@pytest.mark.parametrize("n_proxy,batch", [(256, 128), (129, 64)])  # 129 = 64 + 64 + a batch of one
def test_matches_the_official_loop_past_twenty_epochs(n_proxy, batch):
    proxy, ups = toy(n_proxy=n_proxy)
    agg = build("fedlaw", ctx(n=3, c=3, model_fn=lambda: linear().double(), proxy_data=proxy),
                server_epochs=30, batch_size=batch, server_lr=0.05)
    g = {k: v.astype(np.float64) for k, v in state(linear()).items()}
    ups64 = [upd(u.client_id, {k: v.astype(np.float64) for k, v in u.params.items()}, n=u.num_examples) for u in ups]
    _, m = agg.apply(g, ups64, info(1, 3, range(3)))
    lam, gamma = reference_fedlaw(agg, ups64, 1, 30)
    np.testing.assert_allclose(m["weights"], lam, rtol=1e-9)
    assert m["fedlaw_gamma"] == pytest.approx(gamma, rel=1e-9)
    if n_proxy == 129:
        sizes = [len(b) for b in agg._batches(1, 1, has_bn=False)[0]]
        assert sizes == [64, 64, 1]  # the one-sample batch is kept...
        assert [len(b) for b in agg._batches(1, 1, has_bn=True)[0]] == [64, 64]  # ...except under BatchNorm


def test_without_step_lr_or_with_the_tail_dropped_the_result_differs():
    """The two parity points matter: the official schedule and the kept tail
    change γ on this problem (so the equality above is not vacuous)."""
    proxy, ups = toy(n_proxy=129)
    agg = fedlaw(proxy, server_epochs=30, batch_size=64, server_lr=0.05)
    _, m = agg.apply(state(linear()), ups, info(1, 3, range(3)))
    flat = fedlaw(proxy, server_epochs=30, batch_size=64, server_lr=0.05)
    import fedagg.aggregators.fedlaw as fl

    orig = fl.step_lr
    try:
        fl.step_lr = lambda base, e: base  # no decay
        _, m_flat = flat.apply(state(linear()), ups, info(1, 3, range(3)))
    finally:
        fl.step_lr = orig
    assert abs(m_flat["fedlaw_gamma"] - m["fedlaw_gamma"]) > 1e-4
    drop = fedlaw(proxy, server_epochs=30, batch_size=64, server_lr=0.05)
    drop._batches = lambda rnd, epochs, has_bn: type(agg)._batches(drop, rnd, epochs, True)
    _, m_drop = drop.apply(state(linear()), ups, info(1, 3, range(3)))
    assert abs(m_drop["fedlaw_gamma"] - m["fedlaw_gamma"]) > 1e-4


def reference_swa(agg, ups, rnd, epochs, swa_start=5):
    """The official two-stage loop with torch's own schedulers: λ with
    CosineAnnealingLR(100) then SWALR(0.05), u averaged after epochs > 5; then γ."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, StepLR
    from torch.optim.swa_utils import SWALR

    W = torch.tensor(np.stack([u.params["weight"] for u in ups]), dtype=torch.float64)
    b = torch.tensor(np.stack([u.params["bias"] for u in ups]), dtype=torch.float64)
    n = np.array([u.num_examples for u in ups], float)
    x, y = agg.proxy_x.double(), agg.proxy_y
    half = epochs // 2
    batches = agg._batches(rnd, 2 * half, has_bn=False)

    def run(params, coef, opt, scheds_after, orders):
        for e, order in enumerate(orders):
            for idx in order:
                c = coef()
                loss = torch.nn.functional.cross_entropy(
                    x[idx] @ torch.tensordot(c, W, 1).T + torch.tensordot(c, b, 1), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            scheds_after(e)

    u = torch.tensor(np.log(n / n.sum()), dtype=torch.float64, requires_grad=True)
    u0, snaps = u.detach().clone(), []  # AveragedModel starts as a copy of the initial u
    opt = torch.optim.Adam([u], lr=agg.server_lr, betas=(0.5, 0.999))
    cos, swa = CosineAnnealingLR(opt, T_max=100), SWALR(opt, swa_lr=0.05)

    def after1(e):
        if e > swa_start:
            snaps.append(u.detach().clone())
            swa.step()
        else:
            cos.step()

    run([u], lambda: torch.softmax(u, 0), opt, after1, batches[:half])
    lam = torch.softmax(torch.stack(snaps).mean(0) if snaps else u0, 0).detach()
    g = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([g], lr=agg.server_lr, betas=(0.5, 0.999))
    step = StepLR(opt, step_size=20, gamma=0.5)
    run([g], lambda: torch.exp(g) * lam, opt, lambda e: step.step(), batches[half:])
    return lam.numpy(), float(torch.exp(g).detach())


@pytest.mark.parametrize("epochs", [20, 10])  # 10: stage 1 ends before any average -> initial λ
def test_swa_variant_matches_the_official_two_stage_loop(epochs):
    proxy, ups = toy()
    agg = build("fedlaw_swa", ctx(n=3, c=3, model_fn=lambda: linear().double(), proxy_data=proxy),
                server_epochs=epochs, server_lr=0.05)
    ups64 = [upd(u.client_id, {k: v.astype(np.float64) for k, v in u.params.items()}, n=u.num_examples) for u in ups]
    g = {k: v.astype(np.float64) for k, v in state(linear()).items()}
    out, m = agg.apply(g, ups64, info(1, 3, range(3)))
    lam, gamma = reference_swa(agg, ups64, 1, epochs)
    np.testing.assert_allclose(m["weights"], lam, rtol=1e-9)
    assert m["fedlaw_gamma"] == pytest.approx(gamma, rel=1e-9)
    if epochs == 10:
        assert m["weights"] == pytest.approx([1 / 6, 2 / 6, 3 / 6], rel=1e-12)
    else:
        assert m["weights"] != pytest.approx([1 / 6, 2 / 6, 3 / 6], rel=1e-3)
    expect = gamma * sum(l_ * u.params["weight"] for l_, u in zip(lam, ups64))
    np.testing.assert_allclose(out["weight"], expect, rtol=1e-9)
    assert gamma < 1.0  # inflated clients: stage 2 shrinks
