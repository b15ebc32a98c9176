"""MOON (fedagg/aggregators/moon.py, fedagg/task/contrastive.py): the contrastive term on fixed
vectors against the official code's form; a first round (no previous model) is plain CE, bitwise;
mu=0 equals FedAvg bit for bit; a run whose accuracy rises; stop + resume with the clients'
previous models equals the uninterrupted run; the refusal; strategy_for("moon") with fedagg's
ClientApp.

Reference: QinbinLi/MOON @ 8fcba3c4efc9a47eb24687a91ba94cfb2005103f, ``main.py::train_net_fedcon``:
``posi = cos(pro1, pro2)``; ``logits = posi.reshape(-1,1)``; for each previous net
``logits = cat((logits, cos(pro1, pro3).reshape(-1,1)), dim=1)``; ``logits /= temperature``;
``loss2 = mu * CrossEntropyLoss(logits, zeros)``; ``loss = CE(out, target) + loss2``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from fedagg_testing import SMALL, compose

from fedagg.errors import ConfigError
from fedagg.experiment import build, run
from fedagg.task import correction as corr_terms
from fedagg.task.contrastive import contrastive_loss
from fedagg.task.models import build_model
from fedagg.task.train import get_params, set_params, train_local

MOON = [*SMALL, "aggregator=moon", "runtime=inprocess", "partition.alpha=0.3"]
HEAD = ["model.projection_dim=32"]  # MOON's projection head on the mlp (100 -> 100 -> ReLU -> 32 = z -> 10)


def _official_loss2(z, zg, zp, tau):
    """train_net_fedcon's loss2 / mu, transcribed in numpy (one previous net)."""
    def cos(a, b):
        return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-8)
    logits = np.stack([cos(z, zg), cos(z, zp)], axis=1) / tau
    logp = logits[:, 0] - np.log(np.exp(logits).sum(1))
    return float(-logp.mean())


def test_contrastive_term_on_fixed_vectors():
    # one row by hand: cos(z, zg) = 1/sqrt2, cos(z, zp) = 0, tau = 0.5 -> log(1 + exp(-sqrt2))
    z, zg, zp = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    got = float(contrastive_loss(z, zg, zp, 0.5))
    assert got == pytest.approx(math.log(1 + math.exp(-math.sqrt(2))), rel=1e-6)
    assert got == pytest.approx(0.2176, abs=1e-4)
    # a batch against the official form; the positive closer than the negative -> below log 2
    r = np.random.default_rng(0)
    z, zg, zp = (r.normal(size=(5, 7)).astype(np.float32) for _ in range(3))
    for tau in (0.5, 0.1, 2.0):
        got = float(contrastive_loss(*(torch.as_tensor(a) for a in (z, zg, zp)), tau))
        assert got == pytest.approx(_official_loss2(z, zg, zp, tau), rel=1e-5)
    assert float(contrastive_loss(torch.as_tensor(z), torch.as_tensor(z), torch.as_tensor(-z), 0.5)) < math.log(2)
    # no previous model: the official logits are the positive alone, CE = 0
    assert float(contrastive_loss(torch.as_tensor(z), torch.as_tensor(zg), None, 0.5)) == 0.0


def _train(model, params, corr, x, y):
    set_params(model, params)
    train_local(model, x, y, epochs=1, batch_size=16, lr=0.1, momentum=0.9, seed=3, round=2, client=1,
                correction=corr)
    return get_params(model)


def test_client_step_first_round_is_plain_ce_and_a_previous_model_changes_it():
    r = np.random.default_rng(1)
    x, y = r.normal(size=(48, 8)).astype(np.float32), r.integers(0, 3, size=48)
    model = build_model("mlp", (8,), 3)
    start = get_params(model)
    names = tuple(n for n, _ in model.named_parameters())
    terms = {"rule": "moon", "mu": 5.0, "temperature": 0.5}
    plain = _train(model, start, None, x, y)
    first = corr_terms.build(terms, {}, None, start, names)
    assert first.c_i is None
    got = _train(model, start, first, x, y)
    assert all(np.array_equal(plain[k], got[k]) for k in plain)  # official round 1: loss2 = 0
    state, extras = corr_terms.finish(first, start, got, 3, 0.1)
    assert state is not None and all(np.array_equal(state[n], got[n]) for n in names) and "lr_steps" in extras
    prev = {n: start[n] + r.normal(scale=0.3, size=start[n].shape).astype(np.float32) for n in names}
    second = corr_terms.build(terms, {}, prev, start, names)
    moved = _train(model, start, second, x, y)
    assert any(not np.array_equal(plain[k], moved[k]) for k in plain)
    # the same step by hand, the official loss (CE + mu * loss2) on a model and its frozen copies
    torch.manual_seed(0)
    ref = build_model("mlp", (8,), 3)
    set_params(ref, start)
    glob, old = build_model("mlp", (8,), 3), build_model("mlp", (8,), 3)
    set_params(glob, start)
    set_params(old, {**start, **prev})
    from fedagg.seeding import torch_generator
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    perm = torch.randperm(48, generator=torch_generator(3, "shuffle", 2, 1))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
    for s in range(0, 48, 16):
        idx = perm[s:s + 16]
        opt.zero_grad()
        h = ref.net[:-1](xt[idx])
        out = ref.net[-1](h)
        with torch.no_grad():
            pro2, pro3 = glob.net[:-1](xt[idx]), old.net[:-1](xt[idx])
        cos = torch.nn.CosineSimilarity(dim=-1)
        logits = torch.cat((cos(h, pro2).reshape(-1, 1), cos(h, pro3).reshape(-1, 1)), dim=1) / 0.5
        loss = torch.nn.functional.cross_entropy(out, yt[idx]) + 5.0 * torch.nn.functional.cross_entropy(
            logits, torch.zeros(16, dtype=torch.long))
        loss.backward()
        opt.step()
    for k, v in get_params(ref).items():
        np.testing.assert_allclose(moved[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("moon_runs")
    out = {
        "moon": run(compose(*MOON, "rounds=4", "checkpoint.every=1"), base / "moon"),
        "mu0": run(compose(*MOON, "rounds=2", "aggregator.mu=0"), base / "mu0"),
        "fedavg": run(compose(*SMALL, "aggregator=fedavg", "runtime=inprocess", "partition.alpha=0.3", "rounds=2",
                              "runtime.vectorize=false"), base / "fedavg"),
    }
    run(compose(*MOON, "rounds=2", "checkpoint.every=1"), base / "stopped")
    out["resumed"] = run(compose(*MOON, "rounds=4", "checkpoint.every=1", f"resume={base / 'stopped'}"),
                         base / "resumed")
    # with MOON's projection head (model.projection_dim): a run, stop + resume, and mu=0 against FedAvg on that net
    out["head"] = run(compose(*MOON, *HEAD, "rounds=4", "checkpoint.every=1"), base / "head")
    run(compose(*MOON, *HEAD, "rounds=2", "checkpoint.every=1"), base / "head_stopped")
    out["head_resumed"] = run(compose(*MOON, *HEAD, "rounds=4", "checkpoint.every=1",
                                      f"resume={base / 'head_stopped'}"), base / "head_resumed")
    out["head_mu0"] = run(compose(*MOON, *HEAD, "rounds=2", "aggregator.mu=0"), base / "head_mu0")
    out["head_fedavg"] = run(compose(*SMALL, *HEAD, "aggregator=fedavg", "runtime=inprocess", "partition.alpha=0.3",
                                     "rounds=2", "runtime.vectorize=false"), base / "head_fedavg")
    return base, out


def _model(d):
    return torch.load(d / "model.pt")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_moon_learns(runs):
    _, rows = runs
    acc = [r["test_accuracy"] for r in rows["moon"]]
    assert acc[-1] > acc[0] and acc[-1] > 0.6, acc
    assert all(r["clients_replied"] == 6 and r["clients_rejected"] == 0 for r in rows["moon"])


def test_mu_zero_is_fedavg_bit_for_bit_and_mu_one_is_not(runs):
    base, rows = runs
    assert _same(_model(base / "mu0"), _model(base / "fedavg"))
    assert [r["test_accuracy"] for r in rows["mu0"]] == [r["test_accuracy"] for r in rows["fedavg"]]
    assert rows["moon"][1]["test_loss"] != rows["mu0"][1]["test_loss"]  # round 2 has previous models


def test_stop_and_resume_with_previous_models_equals_the_uninterrupted_run(runs):
    base, rows = runs
    assert [r["round"] for r in rows["resumed"]] == [1, 2, 3, 4]
    assert _same(_model(base / "moon"), _model(base / "resumed"))
    assert [r["test_accuracy"] for r in rows["moon"]] == [r["test_accuracy"] for r in rows["resumed"]]


def test_models_without_a_representation_are_refused_before_training():
    with pytest.raises(ConfigError, match="model=cnn1d.*model=mlp or cnn or lenet5"):
        build(compose(*MOON, "model=cnn1d"))
    with pytest.raises(ConfigError, match="model=mlp"):
        build(compose(*MOON, "model.depth=1"))


def test_strategy_for_moon_keeps_previous_models_in_each_nodes_context_as_the_store_does():
    import foreign_flower_app  # noqa: F401 - the tests' path is set up by conftest
    from fedagg_testing import run_in_node_contexts_and_in_the_store

    run_in_node_contexts_and_in_the_store("moon", build(compose(*MOON, "rounds=2")), rounds=2)

def test_vectorised_cohorts_fall_back_to_per_client_training(tmp_path, caplog, monkeypatch):
    from fedagg.task import cohort

    monkeypatch.setattr(cohort, "_LOGGED", set())  # logged once per process: an earlier run may have said it
    with pytest.raises(ConfigError, match="runtime.vectorize=true.*MOON"):
        run(compose(*MOON, "rounds=1", "runtime.vectorize=true"), tmp_path / "true")
    with caplog.at_level("INFO", logger="fedagg"):
        run(compose(*MOON, "rounds=1", "runtime.vectorize=auto"), tmp_path / "auto")
    assert "MOON's contrastive term" in caplog.text


@pytest.mark.parametrize("name, shape", [("mlp", (8,)), ("cnn", (1, 16, 16)), ("lenet5", (1, 8, 8))])
def test_represent_gives_the_forward_logits_and_the_last_hidden_layer(name, shape):
    from fedagg.task.contrastive import has_representation

    m = build_model(name, shape, 3)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    z, logits = m.represent(x)
    assert has_representation(m) and torch.equal(logits, m(x))
    assert z.shape == (4, 100 if name == "mlp" else 84)
    assert not has_representation(build_model("cnn1d", (8,), 3))


def test_moon_with_disco_weights_is_fedavg_with_disco_weights():
    from fedagg.aggregators import build as build_agg
    from fedagg.aggregators.base import AggregatorContext, ClientUpdate, RoundInfo

    r = np.random.default_rng(2)
    x = {"w": r.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    ups = [ClientUpdate(c, {k: v + r.normal(scale=0.1, size=v.shape).astype(np.float32) for k, v in x.items()},
                        int(r.integers(5, 40)), label_hist=r.integers(0, 9, size=3),
                        extras={"lr_steps": np.array([1.0])}) for c in range(3)]
    info = RoundInfo(round=1, num_clients=3, asked=(0, 1, 2), replied=(0, 1, 2))
    outs = []
    for name in ("moon", "fedavg"):
        a = build_agg(name, AggregatorContext(num_clients=3, num_classes=3), disco=True)
        outs.append(a.apply(x, ups, info))
    assert all(np.array_equal(outs[0][0][k], outs[1][0][k]) for k in x)
    assert outs[0][1]["weights"] == outs[1][1]["weights"]


# --------------------------------------------------------------------------- MOON's projection head
def _lin(layer, w, b):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(b, dtype=torch.float32))


def test_the_contrastive_term_uses_the_projection_z_not_h_worked_example():
    """One step of train_local on one example, mu = 1, tau = 0.5; the reported loss is the loss at the
    starting parameters, CE + mu * l_con. mlp 2 -> 2 (ReLU) -> head l1 2x2 -> ReLU -> l2 2x2 = z -> l3 2x2.
    x = (1, 0): h = relu(I x) = (1, 0) for the model, the global and the previous model alike (same body);
    l1 = I: relu(l1 h) = (1, 0); z = l2 (1, 0) = the first column of l2.
    Model = global: l2 = [[1, 0], [1, 1]] -> z = z_glob = (1, 1); previous: l2 = [[0, 1], [1, 0]] -> z_prev = (0, 1).
    l3 = 0 -> logits (0, 0): CE = log 2.
    With z: sim(z, z_glob) = 1, sim(z, z_prev) = 1/sqrt2: l_con = log(1 + exp((1/sqrt2 - 1)/0.5)) = 0.44254 (total 1.13569).
    With h (the loss without the head): sim(h, h_glob) = sim(h, h_prev) = 1: l_con = log 2 = 0.69315 (total 1.38629)."""
    model: Any = build_model("mlp", (2,), 2, hidden=2, projection_dim=2)
    _lin(model.net[1], [[1, 0], [0, 1]], [0, 0])
    head = model.net[3]
    _lin(head.l1, [[1, 0], [0, 1]], [0, 0])
    _lin(head.l2, [[1, 0], [1, 1]], [0, 0])
    _lin(head.l3, [[0, 0], [0, 0]], [0, 0])
    start = get_params(model)
    names = tuple(n for n, _ in model.named_parameters())
    prev = {**start, "net.3.l2.weight": np.array([[0, 1], [1, 0]], np.float32)}
    corr = corr_terms.build({"rule": "moon", "mu": 1.0, "temperature": 0.5}, {}, prev, start, names)
    x, y = np.array([[1.0, 0.0]], np.float32), np.array([0])
    res = train_local(model, x, y, steps=1, batch_size=1, lr=0.1, correction=corr)
    with_z = math.log(2) + math.log(1 + math.exp((1 / math.sqrt(2) - 1) / 0.5))
    with_h = math.log(2) + math.log(2)
    assert res.steps == 1 and with_z == pytest.approx(1.13569, abs=1e-5)
    assert res.loss == pytest.approx(with_z, rel=1e-6) and abs(res.loss - with_h) > 0.2


def test_moon_with_a_projection_head_learns_and_resumes_bit_for_bit(runs):
    base, rows = runs
    acc = [r["test_accuracy"] for r in rows["head"]]
    assert acc[-1] > acc[0] and acc[-1] > 0.6, acc
    assert all(r["clients_replied"] == 6 and r["clients_rejected"] == 0 for r in rows["head"])
    sd = _model(base / "head")
    assert tuple(sd["net.3.l2.weight"].shape) == (32, 100) and tuple(sd["net.3.l3.weight"].shape) == (10, 32)
    assert [r["round"] for r in rows["head_resumed"]] == [1, 2, 3, 4]
    assert _same(sd, _model(base / "head_resumed"))
    assert [r["test_accuracy"] for r in rows["head"]] == [r["test_accuracy"] for r in rows["head_resumed"]]
    # mu = 0 on the headed net is FedAvg on the headed net (the like-for-like comparison MOON's code makes)
    assert _same(_model(base / "head_mu0"), _model(base / "head_fedavg"))
    assert rows["head"][1]["test_loss"] != rows["head_mu0"][1]["test_loss"]


def test_resume_with_another_projection_dim_is_refused(runs):
    base, _ = runs  # the model's parameter names differ: the checkpoint's config says so before anything runs
    with pytest.raises(ConfigError, match="model.projection_dim: 32 in the checkpoint, 16 now"):
        build(compose(*MOON, "model.projection_dim=16", "rounds=4", f"resume={base / 'head_stopped'}"))


def test_strategy_for_moon_with_a_projection_head():
    import foreign_flower_app  # noqa: F401 - the tests' path is set up by conftest
    from fedagg_testing import run_in_node_contexts_and_in_the_store

    exp = build(compose(*MOON, *HEAD, "rounds=2"))
    assert "net.3.l2.weight" in exp.init_params(0)
    run_in_node_contexts_and_in_the_store("moon", exp, rounds=2)


def test_fedavg_on_a_headed_net_vectorised_equals_per_client(tmp_path):
    rows = {v: run(compose(*SMALL, *HEAD, "aggregator=fedavg", "runtime=inprocess", "rounds=2",
                           f"runtime.vectorize={v}"), tmp_path / v) for v in ("true", "false")}
    a, b = _model(tmp_path / "true"), _model(tmp_path / "false")
    assert a.keys() == b.keys() and "net.3.l1.weight" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert len(rows["true"]) == 2


def test_projection_dim_refusals():
    with pytest.raises(ConfigError, match=r"model.projection_dim=8: model 'cnn1d' takes no projection head.*"
                                          r"use model=mlp or cnn or lenet5"):
        build(compose(*MOON, "model=cnn1d", "+model.projection_dim=8"))
    with pytest.raises(ConfigError, match=r"model.projection_dim=8: model mlp with model.depth=1 .*"
                                          r"set model.depth>=2 or model.projection_dim=0"):
        build(compose(*SMALL, "runtime=inprocess", "model.depth=1", "model.projection_dim=8"))
    with pytest.raises(ConfigError, match=r"model.projection_dim=-1 .*>= 0"):
        build(compose(*SMALL, "runtime=inprocess", "model.projection_dim=-1"))
