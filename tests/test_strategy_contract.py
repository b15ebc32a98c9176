"""fedagg's rules as real Flower strategies in someone else's apps.

The ServerApp below is the test's own (not fedagg's); the ClientApp is a
user's own too (tests/foreign_flower_app.py: standard Flower keys only, no
query handler). Flower's ``run_simulation`` runs them, once, with
``strategy_for(name)`` for every built-in rule and preset in turn; FedAvg and
FedAU must end with the same arrays as fedagg's own run of the same seed.
"""
from __future__ import annotations

import json
import logging

import foreign_flower_app
import numpy as np
import pytest
import torch
from fedagg_testing import compose
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from fedagg import aggregators
from fedagg.experiment import build, run
from fedagg.flower import FedaggStrategy, strategy_for
from fedagg.flower.codec import params_to_record
from fedagg.flower.rules import presets
from fedagg.outcomes import RunFailed
from fedagg.runtime.inprocess import InProcessGrid, set_task_identity
from fedagg.task.models import build_model
from fedagg.task.train import evaluate

N = 4
COMMON = ["dataset=digits", "model=mlp", f"num_clients={N}", "rounds=2", "participation=full", "runtime=inprocess",
          "train.epochs=1", "train.lr=0.1", "train.momentum=0.9", "partition.alpha=0.5"]
RULES = sorted(set(aggregators.available()) | set(presets()))
COMPARED = ("fedavg", "fedau")
OPTIONS = {"gossip_kreg": {"degree": 2}, "gossip_kreg_plain": {"degree": 2}}  # a 2-regular graph on 4 nodes


def _train_config(exp) -> ConfigRecord:
    return ConfigRecord({"data-spec": json.dumps(dict(exp.instruction.data)), "lr": 0.1, "momentum": 0.9,
                         "epochs": 1, "batch-size": 32})


def _rule_kwargs(name: str, exp) -> dict:
    """What the foreign ServerApp hands each rule besides the replies."""
    shape, k = tuple(exp.model_spec["input_shape"]), exp.fd.num_classes

    def model_fn():
        return build_model("mlp", shape, k)

    def init_params_fn(cid: int):
        torch.manual_seed(100 + cid)
        return {n: v.numpy().copy() for n, v in model_fn().state_dict().items()}

    cls = aggregators.get(presets().get(name, {}).get("name", name))
    kw: dict = dict(OPTIONS.get(name, {}))
    if cls.needs_proxy:
        kw.update(proxy_data=(exp.x_test[:60], exp.y_test[:60]), model_fn=model_fn)
    if cls.needs_oracle_probs:
        kw.update(oracle_probs=np.ones(N))  # full participation
    if cls.needs_init_params:
        kw.update(init_params_fn=init_params_fn)
    if cls.needs_sgd_clients:
        kw.update(rho=0.9)  # the foreign ClientApp's SGD momentum (_train_config)
    if cls.needs_label_hist:
        kw.update(num_classes=k)  # the foreign ClientApp answers no query, so say it here
    return kw


def foreign_server_app(exp, results: dict) -> ServerApp:
    app = ServerApp()
    model = exp.model()

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, exp.x_test, exp.y_test)
        return MetricRecord({"loss": loss, "accuracy": acc})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        init = ArrayRecord({k: torch.as_tensor(v) for k, v in exp.init_params(0).items()})
        for name in RULES:
            try:
                strategy = strategy_for(name, **_rule_kwargs(name, exp))
                results[name] = strategy.start(
                    grid=grid, initial_arrays=init, num_rounds=2 if name in COMPARED else 1,
                    train_config=_train_config(exp), evaluate_config=_train_config(exp), evaluate_fn=central,
                )
            except Exception as e:  # noqa: BLE001 - reported per rule by the test
                results[name] = e

    return app


@pytest.fixture(scope="module")
def fedagg_runs(tmp_path_factory):
    out = {}
    for name in COMPARED:
        d = tmp_path_factory.mktemp(name)
        run(compose(*COMMON, f"aggregator={name}"), d)
        out[name] = torch.load(d / "model.pt")
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_every_rule_runs_in_a_foreign_serverapp_under_run_simulation(fedagg_runs, monkeypatch, tmp_path):
    from flwr.simulation import run_simulation

    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    exp = build(compose(*COMMON, "aggregator=fedavg"))
    results: dict = {}
    run_simulation(
        server_app=foreign_server_app(exp, results), client_app=foreign_flower_app.app, num_supernodes=N,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False}},
    )
    own = {k for k in results if aggregators.get(presets().get(k, {}).get("name", k)).needs_fedagg_client}
    assert own >= {"scaffold", "scaffold_m", "fedavg_m"}
    for k in own:  # SCAFFOLD's correction is fedagg's ClientApp's: a foreign app's replies are refused, by name
        assert isinstance(results[k], RunFailed) and "fedagg's ClientApp" in str(results[k]), k
    errors = {k: f"{type(v).__name__}: {v}" for k, v in results.items() if isinstance(v, Exception) and k not in own}
    assert not errors, errors
    assert sorted(results) == RULES
    for name, res in results.items():
        if name in own:
            continue
        rounds = 2 if name in COMPARED else 1
        train = res.train_metrics_clientapp[rounds]
        assert train["num-replied"] == N, (name, train)
        arrays = res.arrays.to_torch_state_dict()
        assert all(torch.isfinite(v).all() for v in arrays.values()), name
        # client-side evaluation: configure_evaluate / aggregate_evaluate give a MetricRecord
        ev = res.evaluate_metrics_clientapp[rounds]
        assert isinstance(ev, MetricRecord) and ev["num-replies"] == N, (name, ev)
        assert 0.0 <= ev["accuracy"] <= 1.0 and ev["num-examples"] > 0
        if not name.startswith("gossip"):
            # gossip starts every node from its own independent initialisation; after one round the reported
            # mean of 4 unrelated models is at chance level, and which partition gets which node's init follows
            # Flower's random node ids here, so only finiteness and the consensus metric are checked for it
            assert res.evaluate_metrics_serverapp[rounds]["accuracy"] > 0.1, name
    for name in COMPARED:  # the same final model as fedagg's own run of the same seed
        mine = results[name].arrays.to_torch_state_dict()
        ref = fedagg_runs[name]
        assert mine.keys() == ref.keys()
        diff = max(float((mine[k] - ref[k]).abs().max()) for k in ref)
        print(f"{name}: max |Δ| vs fedagg's own run = {diff:.3g}")
        assert diff <= 1e-6, (name, diff)
    # the rules really differ: FedAU's and gossip's models are not FedAvg's
    one = results["fedavg"].train_metrics_clientapp[1]
    assert "weights" in one and abs(sum(one["weights"]) - 1.0) < 1e-9
    assert "consensus_distance" in results["gossip"].train_metrics_clientapp[1]


# ------------------------------------------------------------- fast, no Ray
class ForeignGrid(InProcessGrid):
    """fedagg's in-process grid without its client map: like any Flower grid, it
    knows only node ids, so the strategy has to find out the client ids."""

    client_node_map = None


def _inprocess(client_app) -> InProcessGrid:
    set_task_identity()
    return ForeignGrid(client_app, N)


def test_strategy_start_honours_flowers_contract_with_a_foreign_clientapp():
    exp = build(compose(*COMMON, "aggregator=fedau"))
    strategy = strategy_for("fedau_k50")
    assert isinstance(strategy, FedaggStrategy)
    init = params_to_record(exp.init_params(0))
    res = strategy.start(grid=_inprocess(foreign_flower_app.app), initial_arrays=init, num_rounds=2,
                         train_config=_train_config(exp), evaluate_config=_train_config(exp))
    assert strategy.aggregator.name == "fedau" and strategy.aggregator.estimator.K == 50
    assert strategy.num_clients == N and sorted(strategy.node_of) == list(range(N))  # ids by node order
    arrays, metrics = res.arrays, res.train_metrics_clientapp[2]
    assert isinstance(arrays, ArrayRecord) and list(arrays) == list(init)
    assert any(not np.array_equal(arrays[k].numpy(), init[k].numpy()) for k in init)
    assert metrics["num-replied"] == N and metrics["omega_sum_over_N"] == pytest.approx(1.0)
    ev = res.evaluate_metrics_clientapp[2]
    assert isinstance(ev, MetricRecord) and ev["num-replies"] == N and 0 < ev["accuracy"] <= 1


def test_fedaggs_own_clientapp_evaluates_on_the_client(tmp_path):
    """configure_evaluate / aggregate_evaluate with fedagg's ClientApp: each client
    scores the received model on its validation split; the mean is weighted."""
    from fedagg.flower.client_app import app as fedagg_client_app
    from fedagg.server import make_strategy

    exp = build(compose(*COMMON, "aggregator=fedavg", "val_fraction=0.2"))
    strategy = make_strategy(exp)
    strategy.options.fraction_evaluate = 1.0
    grid = _inprocess(fedagg_client_app)
    res = strategy.start(grid, params_to_record(exp.init_params(0)), num_rounds=1)
    ev = res.evaluate_metrics_clientapp[1]
    assert isinstance(ev, MetricRecord) and ev["num-replies"] == N
    sizes = [len(exp.fd.client(c).y_val) for c in range(N)]
    assert ev["num-examples"] == sum(sizes) and all(s > 0 for s in sizes)
    model = exp.model()
    model.load_state_dict(res.arrays.to_torch_state_dict())
    accs = [evaluate(model, exp.fd.client(c).x_val, exp.fd.client(c).y_val)[1] for c in range(N)]
    assert ev["accuracy"] == pytest.approx(np.dot(sizes, accs) / sum(sizes))
    assert strategy.last_record.client_eval["accuracy"] == pytest.approx(ev["accuracy"])


def test_missing_label_histograms_are_named(caplog):
    exp = build(compose(*COMMON, "aggregator=feddisco"))
    cfg = _train_config(exp)
    cfg["send-label-hist"] = False
    strategy = strategy_for("feddisco", num_classes=exp.fd.num_classes)
    init = params_to_record(exp.init_params(0))
    with caplog.at_level(logging.WARNING, logger="fedagg"), pytest.raises(RunFailed, match="label_hist"):
        strategy.start(grid=_inprocess(foreign_flower_app.app), initial_arrays=init, num_rounds=1,
                       train_config=cfg, evaluate_config=cfg)  # a run that accepted no update has failed
    assert len(strategy.last_record.rejected) == N and not strategy.last_record.replied
    assert all("aggregator 'feddisco' needs each client's label_hist" in why
               for why in strategy.last_record.rejected.values())
    assert any("label_hist" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="needs the number of classes"):
        strategy_for("feddisco", num_clients=N, num_classes=0)


def test_rules_that_need_more_than_replies_say_what_to_pass():
    with pytest.raises(ValueError, match=r"rule 'fedlaw' needs proxy_data=\(x, y\) and model_fn"):
        strategy_for("fedlaw")
    with pytest.raises(ValueError, match="rule 'known_prob' needs oracle_probs"):
        strategy_for("known_prob")
    with pytest.raises(ValueError, match="pass init_params_fn= to strategy_for"):
        strategy_for("gossip", num_clients=4, num_classes=10)
    with pytest.raises(ValueError, match="valid names: .*fedau_k50"):
        strategy_for("fedsgd")
    with pytest.raises(TypeError, match="unknown option"):
        strategy_for("fedavg", num_clients=4, num_classes=10, momentum=0.9)


def test_train_reply_echoing_another_clients_id_is_rejected():
    """A node that said it is client 0 but replies as client 1 is caught."""
    from fedagg.flower.client_app import app as fedagg_client_app
    from fedagg.server import make_strategy

    exp = build(compose(*COMMON, "aggregator=fedavg", "rounds=1"))

    def liar(msg: Message, ctx: Context) -> Message:
        reply = fedagg_client_app(msg, ctx)
        if msg.metadata.message_type == "train" and int(ctx.node_config["partition-id"]) == 0:
            m = MetricRecord(dict(reply.content["metrics"]))
            m["partition-id"] = 1
            return Message(RecordDict({"arrays": reply.content["arrays"], "metrics": m}), reply_to=msg)
        return reply

    strategy = make_strategy(exp)
    strategy.start(_inprocess(liar), params_to_record(exp.init_params(0)), num_rounds=1)
    assert list(strategy.last_record.rejected) == [0]
    assert "says partition-id=1" in strategy.last_record.rejected[0]


def test_flower_package_imports_neither_hydra_nor_the_experiment_layer():
    import subprocess
    import sys

    code = ("import sys, fedagg.flower, fedagg.flower.client_app; "
            "bad = [m for m in ('hydra', 'fedagg.cli', 'fedagg.experiment', 'fedagg.server') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_grid_that_knows_the_client_map_spares_the_query_round():
    """fedagg's simulation grids know which node serves which client (client_node_map):
    no query round; a foreign grid without it gets the query (previous tests)."""
    from fedagg.flower.client_app import app as fedagg_client_app
    from fedagg.server import make_strategy

    class CountingGrid(InProcessGrid):
        def push_messages(self, messages):
            msgs = list(messages)
            self.sent = [*getattr(self, "sent", []), *(m.metadata.message_type for m in msgs)]
            return super().push_messages(msgs)

    exp = build(compose(*COMMON, "aggregator=fedavg", "rounds=1"))
    set_task_identity()
    grid = CountingGrid(fedagg_client_app, N)
    strategy = make_strategy(exp)
    strategy.start(grid, params_to_record(exp.init_params(0)), num_rounds=1)
    assert "query" not in grid.sent and grid.sent.count("train") == N
    assert dict(strategy.node_of) == dict(enumerate(grid.node_ids))
    assert strategy.last_record.replied == list(range(N)) and not strategy.last_record.rejected


def test_a_users_own_rule_by_dotted_path_runs_as_a_flower_strategy(monkeypatch):
    """examples/custom_aggregator's median rule (no checks of its own) through strategy_for."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "examples" / "custom_aggregator"))
    exp = build(compose(*COMMON, "aggregator=fedavg"))
    strategy = strategy_for("my_rules.rules.CoordinateMedian")
    init = params_to_record(exp.init_params(0))
    res = strategy.start(grid=_inprocess(foreign_flower_app.app), initial_arrays=init, num_rounds=1,
                         train_config=_train_config(exp), evaluate_config=_train_config(exp))
    assert res.train_metrics_clientapp[1]["median_of"] == N
    with pytest.raises(ValueError, match="not a subclass of fedagg.aggregators.Aggregator"):
        strategy_for("fedagg.flower.strategy_for")
