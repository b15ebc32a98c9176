"""A round's clients as one chunk message and one chunk reply (fedagg's grids), and the
standard per-client Messages everyone else still gets: a foreign strategy on fedagg's
grids, fedagg's strategy with a foreign ClientApp. Plus the work plan's one rule."""
from __future__ import annotations

import foreign_flower_app
import numpy as np
import pytest
from fedagg_testing import compose
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedagg.experiment import build
from fedagg.flower import chunk
from fedagg.flower.client_app import app as fedagg_app
from fedagg.flower.codec import params_to_record
from fedagg.flower.protocol import ARRAYS, CONFIG, LABEL_HIST, METRICS, NUM_EXAMPLES, SimPlan
from fedagg.runtime.inprocess import NODE_ID_BASE, InProcessGrid, set_task_identity
from fedagg.runtime.vectorised import VectorSettings, chunk_message, split_reply
from fedagg.task.models import build_model
from fedagg.task.train import train_local
from fedagg.task.work import plan_work, planned_steps

N = 6
COMMON = ("dataset=digits", "model=mlp", f"num_clients={N}", "train.epochs=1", "train.lr=0.1", "train.momentum=0.9",
          "train.batch_size=16")
set_task_identity()


def _messages(exp, plans: dict[int, SimPlan] | None = None, arrays=None) -> list[Message]:
    arrays = arrays if arrays is not None else params_to_record(exp.init_params(0))
    out = []
    for cid in range(N):
        cfg = exp.instruction.for_client(1, (plans or {}).get(cid, SimPlan())).encode()
        out.append(Message(RecordDict({ARRAYS: arrays, CONFIG: cfg}), dst_node_id=NODE_ID_BASE + cid,
                           message_type=MessageType.TRAIN))
    return out


def _standard(reply: Message) -> tuple[dict[str, bytes], dict]:
    return {k: v.data for k, v in reply.content[ARRAYS].items()}, dict(reply.content[METRICS])


@pytest.mark.parametrize("stacked", [False, True])
def test_a_chunk_reply_split_is_the_single_handlers_replies(stacked):
    """What a grid hands a foreign strategy from a chunk: per client, the reply the
    single-client handler gives -- byte for byte when trained one by one; stacked, the
    same keys and metadata, parameters equal to rounding."""
    exp = build(compose(*COMMON, "heterogeneity=stragglers", "heterogeneity.rate=0.5"))
    plans = {1: SimPlan(fault="crash"), 2: SimPlan(fault="dropout"), 3: SimPlan(work_fraction=0.5)}
    msgs = _messages(exp, plans)
    grid = InProcessGrid(fedagg_app, N)
    single = list(grid.send_and_receive(msgs))
    node_config = grid.node_config
    reply = fedagg_app(chunk_message(msgs, node_config, stacked), Context(1, 0, {}, RecordDict(), {}))
    assert chunk.is_chunk_reply(reply)
    split = split_reply(reply, msgs)
    assert [r.metadata.reply_to_message_id for r in split] == [m.metadata.message_id for m in msgs]
    assert [r.metadata.src_node_id for r in split] == [m.metadata.dst_node_id for m in msgs]
    for a, b in zip(single, split):
        assert a.has_error() == b.has_error()
        if a.has_error():
            assert a.error.reason.strip().splitlines()[-1] == b.error.reason  # the same last line
            continue
        (arr_a, met_a), (arr_b, met_b) = _standard(a), _standard(b)
        if stacked:
            assert met_a.keys() == met_b.keys() and met_a[LABEL_HIST] == met_b[LABEL_HIST]
            assert met_a["steps"] == met_b["steps"] and met_a[NUM_EXAMPLES] == met_b[NUM_EXAMPLES]
            for k in a.content[ARRAYS]:
                assert np.abs(a.content[ARRAYS][k].numpy() - b.content[ARRAYS][k].numpy()).max() <= 1e-5
        else:
            assert (arr_a, met_a) == (arr_b, met_b)
    assert "dropped out mid-round after" in split[2].error.reason and "injected crash" in split[1].error.reason


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg, keeping what each node replied."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen = {r.metadata.src_node_id: _standard(r) for r in replies}
        return super().aggregate_train(server_round, replies)


def test_a_foreign_strategy_on_fedaggs_chunking_grid_gets_per_client_messages():
    """Flower's own FedAvg on fedagg's in-process grid: the grid chunks the round (one
    message per chunk to the ClientApp's chunk handler) but FedAvg gets the standard
    replies, each bit for bit the one it gets without chunks."""
    exp = build(compose(*COMMON))
    config = exp.instruction.for_client(1, SimPlan()).encode()
    init = params_to_record(exp.init_params(0))
    results = []
    for vector in (None, VectorSettings("auto", 4, stacked=False)):
        grid = InProcessGrid(fedagg_app, N, vector=vector)
        calls = []
        inner = grid.client_app
        grid.client_app = lambda m, c: calls.append(m.metadata.message_type) or inner(m, c)  # noqa: B023
        strategy = RecordingFedAvg(fraction_evaluate=0.0, min_available_nodes=N)
        res = strategy.start(grid=grid, initial_arrays=init, num_rounds=1, train_config=ConfigRecord(dict(config)))
        results.append((strategy.seen, res, calls))
    (plain, plain_res, plain_calls), (chunked, chunked_res, chunked_calls) = results
    assert plain_calls == ["train"] * N and chunked_calls == [chunk.MESSAGE_TYPE] * 2  # 6 clients, chunks of 4
    assert sorted(plain) == list(range(NODE_ID_BASE, NODE_ID_BASE + N)) and plain == chunked
    for k in init:  # FedAvg sums in arrival order, which chunks change: equal to rounding
        assert np.abs(plain_res.arrays[k].numpy() - chunked_res.arrays[k].numpy()).max() <= 1e-6


def test_fedaggs_strategy_with_a_foreign_clientapp_sends_per_client_messages():
    """A foreign ClientApp on a chunking grid: its messages carry no fedagg instruction,
    so each goes to it as a standard TRAIN message, and the run is the one without chunks."""
    import json

    from fedagg.flower import strategy_for

    exp = build(compose(*COMMON))
    cfg = ConfigRecord({"data-spec": json.dumps(dict(exp.instruction.data)), "lr": 0.1, "momentum": 0.9,
                        "epochs": 1, "batch-size": 16})
    init = params_to_record(exp.init_params(0))
    out = []
    for vector in (None, VectorSettings("auto", 4)):
        grid = InProcessGrid(foreign_flower_app.app, N, vector=vector)
        types = []
        inner = grid.client_app
        grid.client_app = lambda m, c: types.append(m.metadata.message_type) or inner(m, c)  # noqa: B023
        res = strategy_for("fedavg", num_clients=N).start(grid=grid, initial_arrays=init, num_rounds=1,
                                                          train_config=cfg, evaluate_config=cfg)
        out.append((res.arrays, set(types)))
    assert out[1][1] <= {"train", "evaluate"} and "train" in out[1][1]
    for k in init:
        assert out[0][0][k].data == out[1][0][k].data


def _trained(rows: int, seed: int = 0) -> tuple[dict[str, np.ndarray], list[chunk.Trained]]:
    r = np.random.default_rng(seed)
    sent = {"w": r.normal(size=(3, 4)).astype(np.float32), "b": r.normal(size=4).astype(np.float32)}
    out = [chunk.Trained(j, {k: (v + 0.01 * r.normal(size=v.shape)).astype(np.float32) for k, v in sent.items()},
                         10 + j, 0.5, 0.75, 3, np.array([5, 5 + j])) for j in range(rows)]
    return sent, out


def test_chunk_reply_validation_rejects_rows_and_keeps_views():
    """Validation on the stacked arrays: a row with NaN and a row whose update is too
    large are refused with the per-client path's reasons; a client error is a failure;
    the valid clients' parameters are views into one stacked array (no copy per client)."""
    sent, outs = _trained(5)
    outs[1].params["w"][0, 0] = np.nan
    outs[3].params["b"] += 1e3
    outcomes: list = [*outs[:2], RuntimeError("boom"), *outs[2:]]
    ids = [f"m{j}" for j in range(6)]
    req = Message(RecordDict(), dst_node_id=NODE_ID_BASE, message_type=chunk.MESSAGE_TYPE)
    reply = chunk.reply(req, ids, outcomes)
    rows = chunk.updates(reply, {mid: (j, sent) for j, mid in enumerate(ids)}, num_classes=2, max_update_norm=10.0)
    assert rows["m1"].rejected == "'w' holds non-finite values (NaN or Inf)"
    assert rows["m2"].failed == "RuntimeError: boom"
    assert rows["m4"].rejected is not None and "exceeds validation.max_update_norm=10.0" in rows["m4"].rejected
    good = [rows[m].update for m in ("m0", "m3", "m5")]
    assert all(u is not None for u in good)
    assert [u.client_id for u in good] == [0, 3, 5] and [u.num_examples for u in good] == [10, 12, 14]
    base = good[0].params["w"].base
    assert base is not None and all(u.params["w"].base is base for u in good)  # views of one array
    np.testing.assert_array_equal(good[1].params["w"], outs[2].params["w"])
    np.testing.assert_array_equal(good[2].label_hist, [5, 9])
    assert rows["m0"].pid == 0 and rows["m5"].pid == 4  # the trained rows' own partition ids


def test_updates_held_to_the_contract_at_the_boundary_are_not_checked_twice_by_the_rule():
    """The boundary marks the updates it accepted (ClientUpdate.checked), from a chunk reply and from a
    per-client reply; Aggregator.apply then skips only their parameter pass: the same update unmarked, with a
    NaN, is refused there, and a marked one is still refused for an id it sends twice."""
    from dataclasses import replace

    from fedagg.aggregators.base import AggregatorContext, ClientUpdate, InvalidUpdate, RoundInfo
    from fedagg.aggregators.registry import build as build_aggregator
    from fedagg.flower.protocol import decode_train_reply, train_metrics, train_reply

    sent, outs = _trained(3)
    req = Message(RecordDict(), dst_node_id=NODE_ID_BASE, message_type=chunk.MESSAGE_TYPE)
    ids = ["a", "b", "c"]
    rows = chunk.updates(chunk.reply(req, ids, outs), {m: (j, sent) for j, m in enumerate(ids)}, num_classes=2)
    ups = [rows[m].update for m in ids]
    assert all(u is not None and u.checked for u in ups)
    t = outs[2]
    single = train_reply(Message(RecordDict(), dst_node_id=NODE_ID_BASE, message_type=MessageType.TRAIN), t.params,
                         train_metrics(t.pid, t.num_examples, t.loss, t.accuracy, t.steps, t.label_hist))
    one = decode_train_reply(single, 2, sent, num_classes=2)
    assert one.checked and one.num_examples == ups[2].num_examples == 12
    assert all(np.array_equal(one.params[k], ups[2].params[k]) for k in sent)
    assert not ClientUpdate(2, t.params, t.num_examples).checked  # anyone else's updates: checked in apply
    agg = build_aggregator("fedavg", AggregatorContext(num_clients=3, num_classes=2))
    info = RoundInfo(1, 3, (0, 1, 2), (0, 1, 2))
    out, _ = agg.apply(sent, ups, info)
    bad = replace(ups[1], params={**ups[1].params, "b": np.full(4, np.nan, np.float32)}, checked=False)
    with pytest.raises(InvalidUpdate, match="client 1: 'b' holds non-finite values"):
        agg.apply(sent, [ups[0], bad, ups[2]], info)
    with pytest.raises(InvalidUpdate, match="client 1: sent two updates"):
        agg.apply(sent, [ups[0], ups[1], ups[1]], info)
    n = np.array([10.0, 11.0, 12.0])
    np.testing.assert_allclose(out["w"], sum(w * u.params["w"] for w, u in zip(n / n.sum(), ups)), rtol=1e-6)


def test_chunk_reply_with_wrong_shapes_refuses_the_whole_chunk_and_a_bad_histogram_one_client():
    sent, outs = _trained(3)
    outs[2].label_hist = np.array([-1, 3])
    req = Message(RecordDict(), dst_node_id=NODE_ID_BASE, message_type=chunk.MESSAGE_TYPE)
    ids = ["a", "b", "c"]
    rows = chunk.updates(chunk.reply(req, ids, outs), {m: (j, sent) for j, m in enumerate(ids)}, num_classes=2)
    assert rows["c"].rejected == "label_hist has negative or non-finite counts" and rows["a"].update is not None
    other = {"w": np.zeros((3, 5), np.float32), "b": sent["b"]}
    rows = chunk.updates(chunk.reply(req, ids, outs), {m: (j, other) for j, m in enumerate(ids)}, num_classes=2)
    assert all(r.rejected == "'w' has shape (3, 4), the global model has (3, 5)" for r in rows.values())


def test_the_step_rule_is_one_worked_example():
    # 50 examples in batches of 16: 4 batches an epoch; 2 epochs = 8 steps; 0.3 of that = int(2.4) = 2
    assert planned_steps(50, epochs=2, steps=0, batch_size=16, work_fraction=1.0) == 8
    assert planned_steps(50, epochs=2, steps=0, batch_size=16, work_fraction=0.3) == 2
    assert planned_steps(50, epochs=2, steps=5, batch_size=16, work_fraction=1.0) == 5  # FedAU's fixed I
    assert planned_steps(50, epochs=2, steps=0, batch_size=16, work_fraction=0.01) == 1  # at least one
    assert plan_work(50, epochs=2, steps=0, batch_size=16, fault="dropout").steps == 4  # half the round
    assert plan_work(50, epochs=2, steps=0, batch_size=16, fault="crash").steps == 0
    assert not plan_work(50, epochs=2, steps=0, batch_size=16, fault="deadline").replies
    x, y = np.zeros((50, 4), np.float32), np.arange(50) % 3
    res = train_local(build_model("mlp", (4,), 3), x, y, epochs=2, batch_size=16, work_fraction=0.3)
    assert res.steps == 2  # train_local follows the same rule


def test_chunk_messages_carry_a_shared_model_once():
    exp = build(compose(*COMMON))
    msgs = _messages(exp)
    packed = chunk_message(msgs, InProcessGrid(fedagg_app, N).node_config, True)
    assert list(packed.content.array_records) == [f"{ARRAYS}.0"]
    assert packed.content[CONFIG][chunk.PARTITION_IDS] == list(range(N))
    own = [Message(RecordDict({ARRAYS: params_to_record(exp.init_params(j)), CONFIG: m.content[CONFIG]}),
                   dst_node_id=m.metadata.dst_node_id, message_type=MessageType.TRAIN) for j, m in enumerate(msgs)]
    req = chunk.read(chunk_message(own, InProcessGrid(fedagg_app, N).node_config, True))
    assert len({id(r) for r in req.arrays}) == N  # per-node models (gossip): one each
    p3 = exp.init_params(3)
    assert all(np.array_equal(req.arrays[3][k].numpy(), p3[k]) for k in p3)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fedaggs_strategy_reads_chunk_replies_as_they_are(tmp_path, monkeypatch, model):
    """A run on the in-process grid: every round's training comes back as one reply per chunk, which the
    strategy reads without per-client Messages; for a model trained one by one inside the chunk (the 2-D
    CNN under vectorize=auto) the run is the per-client run bit for bit."""
    import csv

    from fedagg.experiment import run
    from fedagg.flower import strategy as strategy_mod

    seen = []
    real = chunk.updates

    def counting(msg, *a, **kw):
        rows = real(msg, *a, **kw)
        seen.append(len(rows))
        return rows

    monkeypatch.setattr(strategy_mod.chunk, "updates", counting)
    common = ["dataset=mnist_5k" if model == "cnn" else "dataset=digits", f"model={model}", "num_clients=5", "rounds=2",
              "train.steps=3", "runtime=inprocess", "runtime.cohort_chunk=2", "heterogeneity=crashes",
              "heterogeneity.rate=0.3"]
    run(compose(*common, "runtime.vectorize=auto"), tmp_path / "auto")
    assert sorted(seen) == [1, 1, 2, 2, 2, 2]  # 5 clients in 3 chunks of 2 or 1, two rounds: crashed ones included
    seen.clear()
    run(compose(*common, "runtime.vectorize=false"), tmp_path / "false")
    assert seen == []  # per-client Messages
    rows = [[r | {"round_seconds": ""} for r in csv.DictReader(open(tmp_path / d / "metrics.csv"))]
            for d in ("auto", "false")]
    assert [r["clients_failed"] for r in rows[0]] == [r["clients_failed"] for r in rows[1]]
    if model == "cnn":
        import torch

        assert rows[0] == rows[1]
        a, b = (torch.load(tmp_path / d / "model.pt") for d in ("auto", "false"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_chunk_rows_metrics_are_its_per_client_replies_and_their_mean_is_flowers():
    """What the strategy aggregates of a chunk reply's clients (Flower's weighted mean of the replies'
    metrics) equals what it aggregates of the same clients' per-client replies, and the mean itself is
    Flower's ``aggregate_metricrecords`` to the last bit; a chunk reply names each message's node."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    from fedagg.flower.metrics import aggregate_reply_metrics
    from fedagg.flower.protocol import train_metrics

    sent, outs = _trained(4, seed=3)
    for j, o in enumerate(outs):
        o.loss, o.accuracy = 0.1 + 0.37 * j, 0.2 + 0.11 * j
    ids = [f"m{j}" for j in range(4)]
    msgs = [Message(RecordDict({ARRAYS: params_to_record(sent), CONFIG: ConfigRecord({chunk.INSTRUCTION: "{}"})}),
                    dst_node_id=NODE_ID_BASE + 7 + j, message_type=MessageType.TRAIN) for j in range(4)]
    for m, mid in zip(msgs, ids):
        m.metadata.__dict__["_message_id"] = mid
    req = chunk.pack(msgs, list(range(4)), stacked=False)
    reply = chunk.reply(req, ids, outs)
    assert chunk.message_nodes(reply) == {mid: NODE_ID_BASE + 7 + j for j, mid in enumerate(ids)}
    rows = chunk.updates(reply, {mid: (j, sent) for j, mid in enumerate(ids)}, num_classes=2)
    per_client = [train_metrics(o.pid, o.num_examples, o.loss, o.accuracy, o.steps, o.label_hist) for o in outs]
    assert [dict(rows[m].metrics) for m in ids] == [dict(r) for r in per_client]
    counts = [o.num_examples for o in outs]
    from_chunk = aggregate_reply_metrics(None, [None] * 4, [rows[m].metrics for m in ids], counts, NUM_EXAMPLES)
    from_replies = aggregate_reply_metrics(None, [None] * 4, per_client, counts, NUM_EXAMPLES)
    flower = aggregate_metricrecords(
        [RecordDict({METRICS: type(r)({k: v for k, v in r.items() if k != "partition-id"})}) for r in per_client],
        NUM_EXAMPLES)
    assert dict(from_chunk) == dict(from_replies) == dict(flower)
    assert from_chunk[LABEL_HIST] == flower[LABEL_HIST] and "partition-id" not in from_chunk


@pytest.mark.parametrize("num_classes, needs_hist", [(2, None), (2, "feddisco"), (0, None), (0, "feddisco")])
def test_the_vectorised_row_checks_reach_the_scalar_checks_verdict_on_every_row(monkeypatch, num_classes, needs_hist):
    """chunk.updates tests the per-client metrics of a whole chunk at once and runs the scalar
    checks only on rows that fail there: every row -- good, NaN loss, infinite accuracy, accuracy
    1.5, no examples, a negative, an all-zero or a wrongly sized histogram -- gets the same verdict,
    reason, update and metrics as with the scalar checks on every row."""
    sent, outs = _trained(9, seed=5)
    outs[1].loss = float("nan")
    outs[2].accuracy = float("inf")
    outs[3].accuracy = 1.5
    outs[4].num_examples = 0
    outs[5].label_hist = np.array([-2, 7])
    outs[6].label_hist = np.array([0, 0])
    ids = [f"m{j}" for j in range(9)]
    req = Message(RecordDict(), dst_node_id=NODE_ID_BASE, message_type=chunk.MESSAGE_TYPE)
    sent_of = {mid: (j, sent) for j, mid in enumerate(ids)}

    def rows(reply):
        out = chunk.updates(reply, sent_of, num_classes=num_classes, needs_hist=needs_hist)
        return {m: (r.rejected, r.failed, r.pid, r.metrics, None if r.update is None else
                    (r.update.client_id, r.update.num_examples, r.update.train_loss, r.update.train_accuracy,
                     dict(r.update.metadata), None if r.update.label_hist is None else r.update.label_hist.tolist(),
                     {k: v.tolist() for k, v in r.update.params.items()})) for m, r in out.items()}

    reply = chunk.reply(req, ids, outs)
    fast = rows(reply)
    monkeypatch.setattr(chunk, "_plain_rows", lambda m, h, k, *a: np.zeros(k, dtype=bool))
    assert fast == rows(reply)
    accepted = sorted(m for m, r in fast.items() if r[0] is None)
    if needs_hist and num_classes == 0:  # a rule that needs histograms, none read: every row refused
        assert accepted == []
    else:
        assert accepted == ["m0", "m7", "m8"] if num_classes else ["m0", "m5", "m6", "m7", "m8"]
    assert fast["m3"][0] == "train-accuracy=1.5 is outside [0, 1] (a fraction of the examples, not a percentage)"
    wrong = [chunk.Trained(o.pid, o.params, o.num_examples, o.loss, o.accuracy, o.steps, np.array([1, 2, 3]))
             for o in outs]  # every histogram over 3 classes
    reply = chunk.reply(req, ids, wrong)
    monkeypatch.undo()
    fast = rows(reply)
    monkeypatch.setattr(chunk, "_plain_rows", lambda m, h, k, *a: np.zeros(k, dtype=bool))
    assert fast == rows(reply)
    if num_classes:
        assert fast["m0"][0] == "label_hist has shape (3,), expected (2,): one count per class"


def test_configure_train_builds_one_config_record_per_distinct_instruction():
    """Clients with the same plan share one ConfigRecord (as Flower's own strategies share one
    among a round's messages); each message still carries its own client's plan."""
    from fedagg.flower.instruction import ClientInstruction
    from fedagg.server import make_strategy

    n = 12
    exp = build(compose("dataset=digits", "model=mlp", f"num_clients={n}", "heterogeneity=stragglers",
                        "heterogeneity.rate=0.5", "seed=3"))
    strategy = make_strategy(exp)
    msgs = list(strategy.configure_train(1, params_to_record(exp.init_params(0)), ConfigRecord(),
                                         InProcessGrid(fedagg_app, n)))
    plans = {NODE_ID_BASE + c: SimPlan(**dict(exp.heterogeneity.plan(1, c))) for c in range(n)}
    records = {id(m.content[CONFIG]): m.content[CONFIG] for m in msgs}
    assert len(records) == len(set(plans.values())) < n  # one record per distinct plan, shared
    for m in msgs:
        instr = ClientInstruction.decode(m.content[CONFIG])
        assert instr.plan == plans[m.metadata.dst_node_id] and instr.round == 1
        assert m.content[CONFIG]["server-round"] == 1
