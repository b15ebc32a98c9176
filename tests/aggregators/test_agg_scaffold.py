"""SCAFFOLD, SCAFFOLD-M and FedAvg-M (fedagg/aggregators/scaffold.py, fedagg/task/correction.py):
worked examples, and parity with the reference code's update rules transcribed here.

* SCAFFOLD: NIID-Bench, Xtra-Computing/NIID-Bench ``experiments.py`` @
  90cc8de74736d647b835664c0b77ec5372b4ffd4 -- ``train_net_scaffold`` (local steps with the
  post-step correction, option II with ``cnt`` = steps taken), ``local_train_net_scaffold``
  (``total_delta /= len(selected)``; ``c_global += total_delta``) and the ``alg == 'scaffold'``
  loop (the global model is the n_k-weighted mean of the client models).
* SCAFFOLD-M / FedAvg-M: Algorithms 2 and 1 of Cheng et al., ICLR 2024 (arXiv 2306.16504), as
  written in the paper (no reference code was used).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from aggtools import ctx, info, upd
from torch import nn

from fedagg.aggregators import build
from fedagg.aggregators.base import ClientUpdate
from fedagg.seeding import torch_generator
from fedagg.task import correction
from fedagg.task.cohort import Member, train_cohort
from fedagg.task.train import get_params, set_params, train_local

SEED, RND, LR, BS, EPOCHS = 3, 2, 0.1, 4, 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _data(k: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(100 + k)
    return r.normal(size=(n, 4)).astype(np.float32), r.integers(0, 2, size=n)


def _names(m: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, _ in m.named_parameters())


def _rand_like(params, scale, seed):
    r = np.random.default_rng(seed)
    return {k: (scale * r.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}


def _batches(client: int, n: int):
    """The minibatches train_local draws (the data order; not part of any rule)."""
    gen = torch_generator(SEED, "shuffle", RND, client)
    for _ in range(EPOCHS):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, BS):
            yield perm[s : s + BS]


# --------------------------------------------------------------------------- the server rule, by hand
def test_worked_example_paper_form():
    """x = (1, 2); y_1 = (0, 1), y_2 = (2, 2); Δc_1 = (1, 1), Δc_2 = (3, -1); N = 4, |S| = 2.
    x+ = x + mean(y - x) = (1, 1.5); c+ = 0 + (|S|/N) mean Δc = (2/4)(2, 0) = (1, 0)."""
    agg = build("scaffold", ctx(n=4))
    x = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    ups = [ClientUpdate(0, {"w": np.array([0.0, 1.0], np.float32)}, 10,
                        extras={"dc.w": np.array([1.0, 1.0], np.float32), "lr_steps": np.array([0.5])}),
           ClientUpdate(3, {"w": np.array([2.0, 2.0], np.float32)}, 30,
                        extras={"dc.w": np.array([3.0, -1.0], np.float32), "lr_steps": np.array([0.5])})]
    out, m = agg.apply(x, ups, info(1, 4, [0, 3]))
    assert out["w"].tolist() == [1.0, 1.5]
    assert agg.server_arrays(out)["c.w"].tolist() == [1.0, 0.0]
    assert m["c_norm"] == pytest.approx(1.0)
    # NIID-Bench's choices: n-weighted model (1/4, 3/4), c += mean Δc = (2, 0)
    nb = build("scaffold", ctx(n=4), weighted=True, c_update="mean")
    out, _ = nb.apply(x, ups, info(1, 4, [0, 3]))
    assert out["w"].tolist() == pytest.approx([1.5, 1.75])
    assert nb.server_arrays(out)["c.w"].tolist() == [2.0, 0.0]


def test_a_reply_without_the_control_variate_delta_is_named():
    agg = build("scaffold", ctx(n=4))
    u = upd(0, {"w": np.zeros(2, np.float32)})
    assert "needs the control-variate delta (dc.<name>)" in agg.update_problem(u)
    assert "lacks lr_steps" in agg.update_problem(u)
    ok = ClientUpdate(0, u.params, 10, extras={"dc.w": np.zeros(2, np.float32), "lr_steps": np.array([0.1])})
    assert agg.update_problem(ok) is None
    assert build("fedavg_m", ctx(n=4)).update_problem(ClientUpdate(0, u.params, 10,
                                                                  extras={"lr_steps": np.array([0.1])})) is None


@pytest.mark.parametrize("bad", [{"momentum": 0.0}, {"momentum": 1.5}, {"server_lr": 0.0}, {"c_update": "x"}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build("scaffold", ctx(n=4), **bad)


# --------------------------------------------------------------------------- parity: NIID-Bench's SCAFFOLD
def _niid_bench_client(global_params, c_global, c_local, x, y, client, lr, rho, reg):
    """train_net_scaffold, transcribed: SGD(lr, momentum=rho, weight_decay=reg); after each
    optimizer.step(): net_para[key] - lr * (c_global - c_local); then
    c_new = c_local - c_global + (global - net) / (cnt * lr), c_delta = c_new - c_local."""
    net = _model()
    set_params(net, global_params)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=rho, weight_decay=reg)
    cg = {k: torch.as_tensor(v) for k, v in c_global.items()}
    cl = {k: torch.as_tensor(v) for k, v in c_local.items()}
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    cnt = 0
    for idx in _batches(client, len(y)):
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(net(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        net_para = net.state_dict()
        for key in net_para:
            net_para[key] = net_para[key] - lr * (cg[key] - cl[key])
        net.load_state_dict(net_para)
        cnt += 1
    net_para = net.state_dict()
    gp = {k: torch.as_tensor(v) for k, v in global_params.items()}
    c_new = {k: cl[k] - cg[k] + (gp[k] - net_para[k]) / (cnt * lr) for k in net_para}
    return get_params(net), {k: (c_new[k] - cl[k]).numpy() for k in net_para}


def _fedagg_client(global_params, server, state, x, y, client, lr, rho, reg, terms):
    net = _model()
    set_params(net, global_params)
    corr = correction.build(terms, server, state, global_params, _names(net))
    res = train_local(net, x, y, epochs=EPOCHS, batch_size=BS, lr=lr, momentum=rho, weight_decay=reg, seed=SEED,
                      round=RND, client=client, correction=corr)
    trained = get_params(net)
    new_state, extras = correction.finish(corr, global_params, trained, res.steps, lr)
    return trained, new_state, extras, res.steps


@pytest.mark.parametrize("rho, reg", [(0.0, 0.0), (0.9, 1e-3)])
def test_scaffold_round_matches_niid_bench(rho, reg):
    """Three clients of different sizes (different step counts), client 1 with an earlier
    control variate, client 0 asked for the first time (c_i = 0), a nonzero server c."""
    glob = get_params(_model())
    c_global = _rand_like(glob, 0.05, 1)
    c_local = {0: {k: np.zeros_like(v) for k, v in glob.items()}, 1: _rand_like(glob, 0.05, 2),
               2: _rand_like(glob, 0.02, 3)}
    sizes = {0: 10, 1: 7, 2: 13}
    agg = build("scaffold", ctx(n=5), weighted=True, c_update="mean")  # NIID-Bench's server choices
    agg.load_state_dict({"c": c_global})
    server = agg.server_arrays(glob)
    ups, nb_models, nb_deltas = [], {}, {}
    for k, n in sizes.items():
        x, y = _data(k, n)
        nb_models[k], nb_deltas[k] = _niid_bench_client(glob, c_global, c_local[k], x, y, k, LR, rho, reg)
        state = None if k == 0 else c_local[k]
        trained, new_state, extras, _ = _fedagg_client(glob, server, state, x, y, k, LR, rho, reg,
                                                       {"rule": "scaffold", "beta": 1.0})
        for name in glob:
            np.testing.assert_allclose(trained[name], nb_models[k][name], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(extras["dc." + name], nb_deltas[k][name], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(new_state[name], c_local[k][name] + nb_deltas[k][name], rtol=1e-5, atol=1e-6)
        ups.append(ClientUpdate(k, trained, n, extras=extras))
    out, _ = agg.apply(glob, ups, info(1, 5, sizes))
    total = sum(sizes.values())
    for name in glob:  # global_para = sum_k freq_k net_k;  c_global += mean_k c_delta_k
        expect = sum(nb_models[k][name].astype(np.float64) * (sizes[k] / total) for k in sizes)
        np.testing.assert_allclose(out[name], expect, rtol=1e-6, atol=1e-7)
        c_expect = c_global[name] + sum(nb_deltas[k][name] for k in sizes) / len(sizes)
        np.testing.assert_allclose(agg.c[name], c_expect, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- parity: Cheng et al.'s algorithms
def _paper_client(global_params, c, c_i, g, beta, x, y, client, lr):
    """Algorithm 2 (Algorithm 1 with c = c_i = 0): x <- x - lr (beta (grad - c_i + c) + (1 - beta) g);
    c_i+ = the mean of the local stochastic gradients."""
    net = _model()
    set_params(net, global_params)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    grads = {n: [] for n, _ in net.named_parameters()}
    for idx in _batches(client, len(y)):
        net.zero_grad()
        nn.CrossEntropyLoss()(net(xt[idx]), yt[idx]).backward()
        with torch.no_grad():
            for n, p in net.named_parameters():
                grads[n].append(p.grad.clone())
                d = beta * (p.grad - torch.as_tensor(c_i[n]) + torch.as_tensor(c[n])) + (1 - beta) * torch.as_tensor(g[n])
                p.sub_(lr * d)
    return get_params(net), {n: torch.stack(v).mean(0).numpy() for n, v in grads.items()}


@pytest.mark.parametrize("rule", ["scaffold", "fedavg_m"])
def test_momentum_round_matches_the_paper(rule):
    beta, n_clients = 0.7, 6
    glob = get_params(_model())
    zeros = {k: np.zeros_like(v) for k, v in glob.items()}
    g = _rand_like(glob, 0.1, 7)
    c = _rand_like(glob, 0.05, 8) if rule == "scaffold" else zeros
    c_i = {0: zeros, 1: _rand_like(glob, 0.05, 9) if rule == "scaffold" else zeros}
    agg = build(rule, ctx(n=n_clients), momentum=beta)
    agg.load_state_dict({"c": c if rule == "scaffold" else {}, "g": g})
    server = agg.server_arrays(glob)
    ups, paper = [], {}
    for k in (0, 1):
        x, y = _data(k, 10)  # equal sizes: equal K, as the paper's analysis has it
        paper[k] = _paper_client(glob, c, c_i[k], g, beta, x, y, k, LR)
        trained, new_state, extras, steps = _fedagg_client(glob, server, None if k == 0 else c_i[k], x, y, k, LR,
                                                           0.0, 0.0, {"rule": rule, "beta": beta})
        for name in glob:
            np.testing.assert_allclose(trained[name], paper[k][0][name], rtol=1e-5, atol=1e-6)
            if rule == "scaffold":
                np.testing.assert_allclose(new_state[name], paper[k][1][name], rtol=1e-4, atol=1e-5)
        assert (new_state is None) == (rule == "fedavg_m")
        ups.append(ClientUpdate(k, trained, 10, extras=extras))
    K = steps
    out, _ = agg.apply(glob, ups, info(1, n_clients, [0, 1]))
    gamma = LR * K  # the global step: with server_lr = 1, eta * K
    for name in glob:
        g_new = sum((glob[name].astype(np.float64) - paper[k][0][name]) / (LR * K) for k in (0, 1)) / 2
        np.testing.assert_allclose(agg.g[name], g_new, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[name], glob[name] - gamma * g_new, rtol=1e-5, atol=1e-6)
        if rule == "scaffold":  # c + (1/N) sum_i (c_i+ - c_i)
            c_new = c[name] + sum(paper[k][1][name] - c_i[k][name] for k in (0, 1)) / n_clients
            np.testing.assert_allclose(agg.c[name], c_new, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the vectorised cohort
@pytest.mark.parametrize("terms", [{"rule": "scaffold", "beta": 1.0}, {"rule": "scaffold", "beta": 0.8},
                                   {"rule": "fedavg_m", "beta": 0.8}])
def test_cohort_applies_the_term_as_per_client_training(terms):
    glob = get_params(_model())
    server = {"c." + k: v for k, v in _rand_like(glob, 0.05, 4).items()}
    server.update({"g." + k: v for k, v in _rand_like(glob, 0.1, 5).items()})
    states = {0: None, 1: _rand_like(glob, 0.05, 6), 2: _rand_like(glob, 0.03, 7)}
    members, solo = [], {}
    names = _names(_model())
    for k, st in states.items():
        x, y = _data(k, 6 + 3 * k)
        corr = correction.build(terms, server, st, glob, names)
        members.append(Member(k, x, y, glob, epochs=EPOCHS, correction=corr))
        solo[k] = _fedagg_client(glob, server, st, x, y, k, LR, 0.5, 1e-3, terms)[0]
    res = train_cohort(_model(), members, batch_size=BS, lr=LR, momentum=0.5, weight_decay=1e-3, seed=SEED,
                       round=RND)
    for (params, _), k in zip(res, states):
        for name in glob:
            np.testing.assert_allclose(params[name], solo[k][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["scaffold", "feddyn"])
def test_disco_weights_on_scaffold_and_feddyn_are_feddiscos_own(rule):
    """FedDisco's scaffold_alg / feddyn_alg (MediaBrain-SJTU/FedDisco @ 48288a1, algorithms/scaffold.py,
    algorithms/feddyn.py) with args.disco: the size fractions n_k become p_k = ReLU(n_k − a·d_k + b)/Σ, and the new
    model averages the client models with p_k. fedagg's weights are those of aggregator=feddisco on the same
    replies (held against disco.py in test_agg_fednova/test_agg_feddisco), and SCAFFOLD's model at η_g = 1 is
    Σ p_k y_k; the control variate's update does not use the weights (c += (|S|/N) mean Δc)."""
    hists = [[40, 0, 0], [60, 60, 0], [20, 20, 20]]
    ns = [40, 120, 60]
    x = {"w": np.array([1.0, 2.0, -1.0], dtype=np.float64)}
    rng = np.random.default_rng(5)
    ups = [ClientUpdate(i, {"w": rng.normal(size=3)}, ns[i], label_hist=np.array(hists[i]),
                        extras={"dc.w": rng.normal(size=3), "lr_steps": np.array([0.5])}) for i in range(3)]
    ref_w = build("feddisco", ctx(n=3, c=3)).apply(x, [ClientUpdate(u.client_id, u.params, u.num_examples,
                                                                  label_hist=u.label_hist) for u in ups],
                                                   info(1, 3, range(3)))[1]["weights"]
    agg = build(rule, ctx(n=3, c=3), disco=True)
    out, m = agg.apply(x, ups, info(1, 3, range(3)))
    assert m["weights"] == pytest.approx(ref_w, rel=1e-12)
    assert sorted(ref_w) != pytest.approx(sorted(np.array(ns) / sum(ns)))  # disco moved them
    plain = build(rule, ctx(n=3, c=3)).apply(x, ups, info(1, 3, range(3)))[1]["weights"]
    assert plain == pytest.approx([1 / 3] * 3)  # the paper's plain mean without disco
    if rule == "scaffold":
        np.testing.assert_allclose(out["w"], sum(w * u.params["w"] for w, u in zip(ref_w, ups)), rtol=1e-12)
        np.testing.assert_allclose(agg.server_arrays(out)["c.w"], sum(u.extras["dc.w"] for u in ups) / 3, rtol=1e-12)
