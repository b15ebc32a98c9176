"""Every registered aggregator runs 3 rounds end to end through the Flower
host on MNIST-1D, and its result does not depend on whether the run was
interrupted (state survives a checkpoint)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fedagg_testing import compose

from fedagg import aggregators
from fedagg.experiment import run

MNIST1D = ["dataset=mnist1d", "dataset.num_samples=2000", "num_clients=5", "rounds=3",
           "runtime=inprocess", "model=cnn1d", "train.epochs=1"]
EXTRA = {
    # the FedAU family and the oracle need heterogeneous participation to matter
    "fedau": ["participation=bernoulli", "participation.p_min=0.3"],
    "fedau_k50": ["participation=bernoulli", "participation.p_min=0.3"],
    "known_prob": ["participation=bernoulli", "participation.p_min=0.3"],
    "feddisco": ["aggregator.proximal_mu=0.01", "aggregator.server_momentum=0.5"],
    "fedlaw": ["aggregator.server_epochs=2"],
    "fedlaw_swa": ["aggregator.server_epochs=2"],
    # the FedOpt server optimisers compose with the delta-based rules
    "fedavg": ["aggregator.server_opt=adam"],
    "mifa": ["aggregator.server_opt=adagrad"],
    "avg_all": ["aggregator.server_opt=yogi", "aggregator.server_lr=0.05"],
    # Cheng et al.'s local steps are plain SGD (a second, SGD momentum is refused)
    "fedavg_m": ["train.momentum=0"],
    # FedNova needs different step counts to differ from FedAvg; FedDisco's weights on top
    "fednova": ["heterogeneity=epochs", "heterogeneity.max=3", "aggregator.disco=true"],
    # MOON contrasts a representation, which cnn1d does not expose
    "moon": ["model=mlp"],
}


@pytest.mark.parametrize("name", aggregators.available())
def test_aggregator_runs_through_flower_host(name, tmp_path):
    rows = run(compose(*MNIST1D, f"aggregator={name}", *EXTRA.get(name, [])), tmp_path)
    assert len(rows) == 3
    sd = torch.load(tmp_path / "model.pt")
    assert all(torch.isfinite(v).all() for v in sd.values())
    assert all(np.isfinite(r["test_loss"]) for r in rows)
    assert sum(r["clients_replied"] for r in rows) > 0
    if name.startswith("fedlaw"):
        assert "fedlaw_gamma" in rows[0]
    if aggregators.get(name).per_node_models:  # every node's model scored, not only the mean model
        node = [json.loads(line)["node_accuracy"] for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
        assert len(node) == 3 and all(len(a) == 5 for a in node)
        for r, accs in zip(rows, node):
            assert r["node_accuracy_mean"] == pytest.approx(np.mean(accs))
            assert r["node_accuracy_worst"] == min(accs) <= r["node_accuracy_mean"]
    if name == "gossip":
        assert rows[0]["consensus_distance"] > 0


def test_feddisco_keeps_the_clients_fedprox_term(tmp_path, monkeypatch):
    """train.proximal_mu reaches the clients under FedDisco as under FedAvg
    (an unset aggregator.proximal_mu must not override it to 0)."""
    import fedagg.flower.client_app as ca

    seen: list[float] = []
    real = ca.train_local

    def spy(*a, **k):
        seen.append(k["proximal_mu"])
        return real(*a, **k)

    monkeypatch.setattr(ca, "train_local", spy)
    # the ClientApp's path (the vectorised one is checked against it in test_vectorised_e2e.py)
    run(compose(*MNIST1D, "rounds=1", "aggregator=feddisco", "train.proximal_mu=0.01", "runtime.vectorize=false"),
        tmp_path / "a")
    assert seen and set(seen) == {0.01}
    seen.clear()
    run(compose(*MNIST1D, "rounds=1", "aggregator=feddisco", "aggregator.proximal_mu=0.05", "runtime.vectorize=false"),
        tmp_path / "b")
    assert set(seen) == {0.05}


def test_node_accuracy_scores_every_gossip_node():
    """The callback evaluates params_for(n) of every node: three nodes whose
    models are set by hand (a perfect classifier, its negation, zeros)."""
    from types import SimpleNamespace

    from fedagg.aggregators.base import AggregatorContext
    from fedagg.callbacks import NodeAccuracy

    def model():
        return torch.nn.Linear(2, 2, bias=False)

    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    y = np.array([0, 1, 0, 0])  # the identity scores 3/4, its negation 1/4
    eye = {"weight": np.eye(2, dtype=np.float32)}
    agg = aggregators.build("gossip", AggregatorContext(num_clients=3, num_classes=2, init_params_fn=lambda c: eye),
                            topology="complete")
    agg.nodes = {0: eye, 1: {"weight": -np.eye(2, dtype=np.float32)}, 2: {"weight": np.zeros((2, 2), np.float32)}}
    exp = SimpleNamespace(model=model, x_test=x, y_test=y, cfg=SimpleNamespace(num_clients=3))
    rec = SimpleNamespace(agg_metrics={})
    NodeAccuracy(exp).after_round(rec, SimpleNamespace(aggregator=agg, params=eye))
    # zeros: all logits tie, argmax picks class 0 -> 3/4
    assert rec.agg_metrics["node_accuracy"] == [0.75, 0.25, 0.75]
    assert rec.agg_metrics["node_accuracy_mean"] == pytest.approx(7 / 12)
    assert rec.agg_metrics["node_accuracy_worst"] == 0.25
