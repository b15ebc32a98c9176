"""fedagg's strategies as a Flower user meets them: Flower's constructor
options, no message type a plain ClientApp cannot handle, replies matched by
node, an honest end when every reply is refused, Flower's leniency where
nothing is lost, and Flower's DP wrappers and clipping mods around them.

All of it runs on fedagg's in-process grid without its client map (a grid
that knows only node ids, like Flower's); the run_simulation check of the
quickstart ClientApp is in test_flower_quickstart.py.
"""
from __future__ import annotations

import json
import logging

import foreign_flower_app
import numpy as np
import pytest
import quickstart_pytorch_app as quickstart
import torch
from fedagg_testing import compose
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedagg import aggregators
from fedagg.experiment import build
from fedagg.flower import FedaggStrategy, strategy_for
from fedagg.flower.codec import params_to_record, record_to_params
from fedagg.flower.options import FlowerOptions
from fedagg.outcomes import RunFailed
from fedagg.runtime.inprocess import NODE_ID_BASE, InProcessGrid, set_task_identity

N = 4
COMMON = ["dataset=digits", "model=mlp", f"num_clients={N}", "rounds=1", "participation=full", "runtime=inprocess",
          "train.epochs=1", "train.lr=0.1", "partition.alpha=0.5"]


class ForeignGrid(InProcessGrid):
    """fedagg's in-process grid without its client map: it knows only node ids, as Flower's grids do.
    ``reverse`` serves partition N-1-i on node 1000+i, so node order is not partition order."""

    client_node_map = None
    reverse = False

    def __init__(self, app, n: int = N) -> None:  # noqa: ANN001
        super().__init__(app, n)
        self.sent_types: list[str] = []

    def node_config(self, node_id: int) -> dict:
        cfg = super().node_config(node_id)
        if self.reverse:
            cfg["partition-id"] = self.num_nodes - 1 - cfg["partition-id"]
        return cfg

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        msgs = list(messages)
        self.sent_types += [m.metadata.message_type for m in msgs]
        return super().push_messages(msgs)


def _grid(app, n: int = N) -> ForeignGrid:  # noqa: ANN001
    set_task_identity()
    return ForeignGrid(app, n)


@pytest.fixture(scope="module")
def exp():
    return build(compose(*COMMON, "aggregator=fedavg"))


def _config(exp, **extra) -> ConfigRecord:  # noqa: ANN001, ANN003
    return ConfigRecord({"data-spec": json.dumps(dict(exp.instruction.data)), "lr": 0.1, "momentum": 0.0,
                         "epochs": 1, "batch-size": 32, **extra})


def _init(exp) -> ArrayRecord:  # noqa: ANN001
    return params_to_record(exp.init_params(0))


# ------------------------------------------------------------------ 1. Flower's options
def test_strategy_for_takes_flowers_options_with_flowers_defaults():
    s = strategy_for("fedau", K=50, fraction_train=0.5, min_train_nodes=1, weighted_by_key="n",
                     arrayrecord_key="model", configrecord_key="cfg", fraction_evaluate=0.0)
    o = s.options
    assert (o.fraction_train, o.min_train_nodes, o.weighted_by_key, o.arrayrecord_key, o.configrecord_key) == (
        0.5, 1, "n", "model", "cfg")
    assert o.min_evaluate_nodes == 0  # Flower: fraction_evaluate=0 needs no minimum
    d = strategy_for("fedavg").options
    assert d == FlowerOptions() and (d.fraction_train, d.fraction_evaluate, d.min_train_nodes, d.min_evaluate_nodes,
                                     d.min_available_nodes, d.weighted_by_key) == (1.0, 1.0, 2, 2, 2, "num-examples")
    # Flower's sample sizes: max(int(fraction * n), minimum), here capped at what is there
    assert FlowerOptions(fraction_evaluate=0.05).evaluate_sample_size(20) == 2
    assert FlowerOptions(fraction_train=0.5).train_sample_size(5) == 2
    assert FlowerOptions(fraction_train=0.1, min_train_nodes=3).train_sample_size(2) == 2
    with pytest.raises(ValueError, match=r"fraction_train=1.5 must be a number in \[0, 1\]"):
        strategy_for("fedavg", fraction_train=1.5)


def test_an_unknown_option_is_refused_at_construction_listing_the_accepted_ones():
    with pytest.raises(TypeError) as e:
        strategy_for("fedavg", fraction_trian=0.5)  # no num_clients: the rule is not even built yet
    msg = str(e.value)
    assert "\n" not in msg and "unknown option(s) ['fraction_trian']" in msg
    assert "Flower's fraction_train, fraction_evaluate, min_train_nodes" in msg
    assert "fedagg's num_clients" in msg and "rule 'fedavg': server_opt, server_lr, server_momentum" in msg


def test_fraction_train_samples_among_the_clients_the_pattern_makes_available(exp):
    class Odd:  # a participation pattern: clients 1, 3, 5, 7 are online
        def available(self, round: int) -> np.ndarray:
            return np.arange(8) % 2 == 1

    def asked(seed: int, rnd: int) -> list[int]:
        s = FedaggStrategy(aggregators.get("fedavg"), participation=Odd(), seed=seed,
                           options=FlowerOptions(fraction_train=0.5, min_train_nodes=1))
        msgs = s.configure_train(rnd, _init(exp), _config(exp), _grid(foreign_flower_app.app, 8))
        return sorted(s.client_of[m.metadata.dst_node_id] for m in msgs)

    a = asked(0, 1)
    assert len(a) == 2 and set(a) <= {1, 3, 5, 7}  # int(0.5 * 4) of the available ones
    assert asked(0, 1) == a  # the named stream: the same draw again
    assert {tuple(asked(0, r)) for r in range(1, 9)} != {tuple(a)}  # ... and another one in other rounds


def test_fraction_evaluate_honours_min_evaluate_nodes(exp):
    s = strategy_for("fedavg", fraction_evaluate=0.05)
    grid = _grid(foreign_flower_app.app, 20)
    s.connect(grid)
    assert len(list(s.configure_evaluate(1, _init(exp), _config(exp), grid))) == 2


# ------------------------------------------------------------------ 2. ids without a query
def test_a_plain_clientapp_is_sent_no_query_and_the_console_has_no_error(exp, caplog):
    grid = _grid(foreign_flower_app.app)
    with caplog.at_level(logging.INFO):
        res = strategy_for("fedavg").start(grid=grid, initial_arrays=_init(exp), num_rounds=2,
                                           train_config=_config(exp), evaluate_config=_config(exp))
    assert set(grid.sent_types) == {"train", "evaluate"}
    assert res.train_metrics_clientapp[2]["num-replied"] == N
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r.getMessage() for r in caplog.records if r.name == "flwr"]
    assert "[ROUND 2/2]" in lines and "configure_train: Sampled 4 nodes (out of 4)" in lines
    assert "aggregate_train: Received 4 results and 0 failures (0 rejected)" in lines


def test_client_ids_follow_the_partition_id_echoed_in_the_first_train_replies(exp):
    def echo(msg: Message, ctx: Context) -> Message:
        reply = foreign_flower_app.app(msg, ctx)
        if msg.metadata.message_type == "train":
            reply.content["metrics"]["partition-id"] = int(ctx.node_config["partition-id"])
        return reply

    grid = _grid(echo)
    grid.reverse = True  # node 1000+i serves partition 3-i: node order says the opposite
    s = strategy_for("fedavg")
    s.start(grid=grid, initial_arrays=_init(exp), num_rounds=2, train_config=_config(exp),
            evaluate_config=_config(exp))
    assert dict(s.node_of) == {c: NODE_ID_BASE + N - 1 - c for c in range(N)}
    assert s.last_record.replied == list(range(N)) and not s.last_record.rejected


# ------------------------------------------------------------------ 3. replies matched by node
class RebuildingWrapper(Strategy):
    """A user's wrapper: rebuilds every message of the inner strategy, adding a config key."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        out = []
        for m in self.inner.configure_train(server_round, arrays, config, grid):
            cfg = ConfigRecord({**m.content["config"], "wrapped": True})
            out.append(Message(RecordDict({"arrays": m.content["arrays"], "config": cfg}),
                               dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type))
        return out

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):  # noqa: ANN001, ANN201
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def test_rebuilt_messages_are_matched_to_their_clients_by_node(exp):
    inner = strategy_for("fedavg", fraction_evaluate=0.0)
    init = _init(exp)
    res = RebuildingWrapper(inner).start(grid=_grid(foreign_flower_app.app), initial_arrays=init, num_rounds=1,
                                         train_config=_config(exp))  # Flower's own loop
    assert res.train_metrics_clientapp[1]["num-replied"] == N and res.train_metrics_clientapp[1]["num-failed"] == 0
    assert any(not np.array_equal(res.arrays[k].numpy(), init[k].numpy()) for k in init)


# ------------------------------------------------------------------ 4. an honest end
def test_every_reply_rejected_for_max_failed_rounds_rounds_raises_naming_the_reason(exp):
    s = strategy_for("feddisco", num_classes=exp.fd.num_classes, max_failed_rounds=2)
    with pytest.raises(RunFailed, match=r"2 consecutive rounds .*max_failed_rounds=2\); first: client 0's update "
                                        r"rejected: aggregator 'feddisco' needs each client's label_hist"):
        s.start(grid=_grid(foreign_flower_app.app), initial_arrays=_init(exp), num_rounds=5,
                train_config=_config(exp, **{"send-label-hist": False}), evaluate_config=_config(exp))
    assert s.last_record.round == 2


def test_every_client_failing_raises_naming_the_client_error(exp):
    def broken(msg: Message, ctx: Context) -> Message:
        raise RuntimeError("disk full")

    with pytest.raises(RunFailed, match="first: client 0 failed: client error: .*disk full"):
        strategy_for("fedau").start(grid=_grid(broken), initial_arrays=_init(exp), num_rounds=4)


# ------------------------------------------------------------------ 5. lenient where nothing is lost
def test_replies_flower_accepts_are_accepted_and_wrong_ones_named(exp):
    def odd_replies(msg: Message, ctx: Context) -> Message:
        reply = foreign_flower_app.app(msg, ctx)
        pid = int(ctx.node_config["partition-id"])
        if msg.metadata.message_type == "evaluate":
            reply.content["metrics"]["per-class"] = [float(pid), 1.0]
            return reply
        m = reply.content["metrics"]
        m["train_loss"] = float(pid)
        if pid == 0:
            m["num-examples"] = float(m["num-examples"])  # an integral float
        if pid == 1:  # its one ArrayRecord under another name
            reply = Message(RecordDict({"model": reply.content["arrays"], "metrics": m}), reply_to=msg)
        if pid == 2:
            m["train-accuracy"] = 87.5  # a percentage
        if pid == 3:
            m["num-examples"] = 10.5
        return reply

    s = strategy_for("fedavg")
    res = s.start(grid=_grid(odd_replies), initial_arrays=_init(exp), num_rounds=1, train_config=_config(exp),
                  evaluate_config=_config(exp))
    rec = s.last_record
    assert rec.replied == [0, 1]
    assert "train-accuracy=87.5 is outside [0, 1] (a fraction of the examples, not a percentage)" in rec.rejected[2]
    assert "num-examples=10.5 is not a positive whole number" in rec.rejected[3]
    n = [len(exp.fd.client(c).y_train) for c in (0, 1)]
    train = res.train_metrics_clientapp[1]
    assert train["train_loss"] == pytest.approx(n[1] / sum(n))  # Flower's weighted mean of the ClientApp's own
    assert train["num-replied"] == 2 and "partition-id" not in train
    ev = res.evaluate_metrics_clientapp[1]
    sizes = [len(exp.fd.client(c).y_train) for c in range(N)]
    assert ev["per-class"] == pytest.approx([np.dot(sizes, range(N)) / sum(sizes), 1.0])  # lists element-wise


# ------------------------------------------------------------------ 6. Flower's DP wrappers and mods
def _update_norm(a: ArrayRecord, b: ArrayRecord) -> float:
    pa, pb = record_to_params(a), record_to_params(b)
    return float(np.sqrt(sum(np.sum((pa[k].astype(np.float64) - pb[k]) ** 2) for k in pa)))


@pytest.mark.parametrize("name", ["fedavg", "fedau", "feddisco"])
def test_flowers_server_side_dp_wrappers_around_fedaggs_strategies(name, exp):
    """Noise 0 makes the wrapper's effect checkable: the clipped updates' weighted mean moves the
    model at most the clipping norm (FedAU's step is the same mean scaled by participants/N)."""
    init, clip = _init(exp), 0.05
    kw = {"num_classes": exp.fd.num_classes} if name == "feddisco" else {}
    plain = strategy_for(name, **kw).start(grid=_grid(foreign_flower_app.app), initial_arrays=init, num_rounds=1,
                                           train_config=_config(exp), evaluate_config=_config(exp))
    assert _update_norm(plain.arrays, init) > 2 * clip  # clipping has something to do
    for wrapper in (DifferentialPrivacyServerSideFixedClipping(strategy_for(name, **kw), 0.0, clip, N),
                    DifferentialPrivacyServerSideAdaptiveClipping(strategy_for(name, **kw), 0.0, N,
                                                                  initial_clipping_norm=clip)):
        res = wrapper.start(grid=_grid(foreign_flower_app.app), initial_arrays=init, num_rounds=1,
                            train_config=_config(exp), evaluate_config=_config(exp))
        assert res.train_metrics_clientapp[1]["num-replied"] == N, type(wrapper).__name__
        assert 0 < _update_norm(res.arrays, init) <= clip * (1 + 1e-5), type(wrapper).__name__


def test_noise_of_the_server_side_wrapper_reaches_the_global_model(exp):
    torch.manual_seed(0)
    np.random.seed(0)  # Flower's DP noise draws from numpy's global generator
    init = _init(exp)
    inner = strategy_for("fedavg", fraction_evaluate=0.0)
    wrapper = DifferentialPrivacyServerSideFixedClipping(inner, 1.0, 0.05, N)
    res = inner.start(_grid(foreign_flower_app.app), init, num_rounds=2, train_config=_config(exp), via=wrapper)
    # the noisy model the wrapper returned is what the strategy holds (and sends on)
    assert all(np.array_equal(inner.params[k], res.arrays[k].numpy()) for k in init)
    assert inner.last_record.agg_metrics["dp_noise_multiplier"] == 1.0
    assert inner.last_record.agg_metrics["dp_clipping_norm"] == 0.05
    assert _update_norm(res.arrays, init) > 0.05 * 4  # noise of stdev 1.0 * 0.05 / 4 per entry, ~12k entries


@pytest.mark.parametrize("name", ["fedavg", "fedau", "feddisco"])
def test_flowers_client_side_clipping_mods_with_fedaggs_strategies(name):
    """The quickstart ClientApp with fixedclipping_mod / adaptiveclipping_mod; the wrappers send the norm."""
    net = quickstart.Net()
    init = ArrayRecord(net.state_dict())
    kw = {"num_classes": 10} if name == "feddisco" else {}
    cfg = ConfigRecord({"lr": 0.05})
    clip = 0.02
    for wrapper, mod in (
        (DifferentialPrivacyClientSideFixedClipping(strategy_for(name, fraction_evaluate=0.0, **kw), 0.0, clip, N),
         fixedclipping_mod),
        (DifferentialPrivacyClientSideAdaptiveClipping(strategy_for(name, fraction_evaluate=0.0, **kw), 0.0, N,
                                                       initial_clipping_norm=clip), adaptiveclipping_mod),
    ):
        res = wrapper.start(grid=_grid(quickstart.make_app(mod)), initial_arrays=init, num_rounds=1, train_config=cfg)
        train = res.train_metrics_clientapp[1]
        assert train["num-replied"] == N, (name, mod.__name__, train)
        assert 0 < _update_norm(res.arrays, init) <= clip * (1 + 1e-5), (name, mod.__name__)


# ------------------------------------------------------------------ 7. the quickstart ClientApp
@pytest.mark.parametrize("name", ["fedavg", "fedau", "feddisco"])
def test_the_quickstart_clientapp_runs_unchanged_with_a_clean_console(name, caplog):
    kw = {"num_classes": 10} if name == "feddisco" else {}
    init = ArrayRecord(quickstart.Net().state_dict())
    with caplog.at_level(logging.INFO):
        res = strategy_for(name, **kw).start(grid=_grid(quickstart.app), initial_arrays=init, num_rounds=2,
                                             train_config=ConfigRecord({"lr": 0.05}))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records
                                                                             if r.levelno >= logging.WARNING]
    train, ev = res.train_metrics_clientapp[2], res.evaluate_metrics_clientapp[2]
    assert train["num-replied"] == N and np.isfinite(train["train_loss"]) and len(train["label-hist"]) == 10
    assert ev["num-replies"] == N and 0.0 <= ev["eval_acc"] <= 1.0 and ev["num-examples"] == 16 * N
    assert any(not np.array_equal(res.arrays[k].numpy(), init[k].numpy()) for k in init)
