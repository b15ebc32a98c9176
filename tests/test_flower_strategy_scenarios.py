"""The scenarios of Flower's own strategy tests (flwr/serverapp/strategy:
strategy_utils_test.py for FedAvg's aggregation and reply checks,
fedavgm_test.py, fedopt_test.py), asked of ``strategy_for(...)``.

Each test configures a round on a grid of N nodes, answers the messages
itself with the replies Flower's tests use, and checks ``aggregate_train``.
Where Flower raises for the whole round (an inconsistent reply), fedagg
rejects that reply with its reason and aggregates the others; Flower's float
weights are whole example counts here (fedagg reads them as counts).
"""
from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedagg.flower import FedaggStrategy, strategy_for
from fedagg.runtime.calls import reply_from_node
from fedagg.runtime.inprocess import InProcessGrid, set_task_identity


class NodesOnly(InProcessGrid):
    client_node_map = None


def _configure(strategy: FedaggStrategy, arrays: ArrayRecord, n: int, rnd: int = 1) -> list[Message]:
    set_task_identity()
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), NodesOnly(None, n)))
    assert len(msgs) == n
    return sorted(msgs, key=lambda m: strategy.client_of[m.metadata.dst_node_id])


def _reply(msg: Message, content: RecordDict) -> Message:
    msg.metadata.__dict__["_message_id"] = msg.metadata.message_id or f"m{msg.metadata.dst_node_id}"
    return reply_from_node(Message(content, reply_to=msg), msg)


def _arrays(values: list[np.ndarray]) -> ArrayRecord:
    return ArrayRecord({f"p{i}": Array(v) for i, v in enumerate(values)})


def _train(strategy: FedaggStrategy, init: list[np.ndarray], replies: list[tuple[list[np.ndarray], dict]],
           rounds: int = 1) -> tuple[ArrayRecord, MetricRecord]:
    arrays = _arrays(init)
    for rnd in range(1, rounds + 1):
        msgs = _configure(strategy, arrays, len(replies), rnd)
        out = [_reply(m, RecordDict({"arrays": _arrays(v), "metrics": MetricRecord(metrics)}))
               for m, (v, metrics) in zip(msgs, replies)]
        new, metrics = strategy.aggregate_train(rnd, out)
        assert new is not None and metrics is not None
        arrays = new
    return arrays, metrics


# ------------------------------------------------------------------ FedAvg (strategy_utils_test)
def test_fedavg_weighted_mean_of_arrays_and_metrics():
    g = np.random.default_rng(0)
    counts = [25, 40, 35]
    models = [[g.standard_normal((7, 3)).astype(np.float32) for _ in range(4)] for _ in counts]
    extra = [{"a": 1, "b": 2.0, "c": g.standard_normal(3).tolist()} for _ in counts]
    init = [np.zeros((7, 3), np.float32) for _ in range(4)]
    arrays, metrics = _train(strategy_for("fedavg"), init,
                             [(m, {"num-examples": n, **e}) for m, n, e in zip(models, counts, extra)])
    for i, got in enumerate(arrays.to_numpy_ndarrays()):
        np.testing.assert_allclose(got, np.average([m[i] for m in models], axis=0, weights=counts), rtol=1e-5,
                                   atol=1e-6)
    assert metrics["a"] == pytest.approx(1.0) and metrics["b"] == pytest.approx(2.0)
    assert metrics["c"] == pytest.approx(np.average([e["c"] for e in extra], axis=0, weights=counts).tolist())
    assert "num-examples" not in metrics  # Flower leaves the weight out of the mean


def test_fedavg_weighted_mean_of_zero_dimensional_arrays():
    values, counts = [np.array(0.5), np.array(-1.25), np.array(2.0)], [25, 40, 35]
    arrays, _ = _train(strategy_for("fedavg"), [np.array(0.0)],
                       [([v], {"num-examples": n}) for v, n in zip(values, counts)])
    got = arrays.to_numpy_ndarrays()[0]
    assert got.shape == () and got == pytest.approx(np.average(values, weights=counts))


@pytest.mark.parametrize(("content", "reason"), [
    (lambda a: {"global-model": a, "metrics": MetricRecord({"num-examples": 2.0})}, None),  # compliant
    (lambda a: {"global-model": a, "metrics": MetricRecord({"num-examples": [2]})}, "num-examples=[2]"),
    (lambda a: {"global-model": a, "metrics": MetricRecord({"loss": 0.01})}, "num-examples=None"),
    (lambda a: {"global-model": a}, "reply has no 'metrics' record"),
    (lambda a: {"global-model": a, "another-model": a, "metrics": MetricRecord({"num-examples": 2})},
     "reply has no 'arrays' record and 2 ArrayRecords"),
    # Flower refuses a second MetricRecord; fedagg reads the one named 'metrics' (nothing is ambiguous) ...
    (lambda a: {"global-model": a, "metrics": MetricRecord({"num-examples": 2}),
                "more-metrics": MetricRecord({"loss": 0.3})}, None),
    # ... and refuses two when neither is
    (lambda a: {"global-model": a, "m1": MetricRecord({"num-examples": 2}), "m2": MetricRecord({"loss": 0.3})},
     "reply has no 'metrics' record and 2 MetricRecords"),
    (lambda a: {"arrays": ArrayRecord({"other": next(iter(a.values()))}), "metrics": MetricRecord({"num-examples": 2})},
     "parameter names differ"),
])
def test_fedavg_reply_consistency(content, reason):
    """Flower's consistency cases: a compliant reply (its one ArrayRecord under another name) is
    aggregated; each defective one is rejected with what is wrong, the other replies aggregated
    (Flower skips the whole round)."""
    s = strategy_for("fedavg")
    init = _arrays([np.zeros((7, 3), np.float32)])
    msgs = _configure(s, init, 2)
    good = _reply(msgs[0], RecordDict({"arrays": _arrays([np.ones((7, 3), np.float32)]),
                                       "metrics": MetricRecord({"num-examples": 2})}))
    odd = _reply(msgs[1], RecordDict(content(_arrays([np.full((7, 3), 3.0, np.float32)]))))
    arrays, metrics = s.aggregate_train(1, [good, odd])
    if reason is None:
        assert s.last_record.replied == [0, 1] and arrays["p0"].numpy() == pytest.approx(np.full((7, 3), 2.0))
    else:
        assert s.last_record.replied == [0] and reason in s.last_record.rejected[1], s.last_record.rejected
        assert arrays["p0"].numpy() == pytest.approx(np.ones((7, 3)))


# ------------------------------------------------------------------ FedAvgM (fedavgm_test)
W0 = [np.array([[1, 2, 3], [4, 5, 6]], np.float32), np.array([7, 8, 9, 10], np.float32)]
W1 = [np.array([[29, 23, 19], [17, 13, 11]], np.float32), np.array([7, 5, 3, 2], np.float32)]
ZEROS = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
EXPECTED = [(W0[0] * 1 + W1[0] * 2) / 3, (W0[1] * 1 + W1[1] * 2) / 3]
REPLIES = [(W0, {"num-examples": 1}), (W1, {"num-examples": 2})]


def test_fedavgm_near_one_server_lr_and_no_momentum_is_the_weighted_mean():
    arrays, _ = _train(strategy_for("fedavg", server_lr=1.0 + 1e-9), ZEROS, REPLIES)
    for got, want in zip(arrays.to_numpy_ndarrays(), EXPECTED):
        np.testing.assert_almost_equal(got, want, decimal=5)


def test_fedavgm_near_zero_momentum_over_two_rounds_is_the_weighted_mean():
    arrays, _ = _train(strategy_for("fedavg", server_lr=1.0 + 1e-9, server_momentum=1e-9), ZEROS, REPLIES, rounds=2)
    for got, want in zip(arrays.to_numpy_ndarrays(), EXPECTED):
        np.testing.assert_almost_equal(got, want, decimal=5)


def test_fedavgm_with_scalar_shaped_weights():
    arrays, _ = _train(strategy_for("fedavg", server_lr=1.0 + 1e-9, server_momentum=0.9), [np.array(0.0)],
                       [([np.array(1.0)], {"num-examples": 1}), ([np.array(3.0)], {"num-examples": 2})])
    got = arrays.to_numpy_ndarrays()[0]
    assert got.shape == () and got == pytest.approx(7.0 / 3.0, rel=1e-6)


# ------------------------------------------------------------------ FedOpt (fedopt_test)
@pytest.mark.parametrize(("shapes", "reason"), [
    ([(7, 3)] * 4, None),  # same keys and shapes: aggregated
    ([(7, 3)] * 5, "parameter names differ"),  # one array more than the global model
    ([(7, 5)] * 4, "'p0' has shape (7, 5), the global model has (7, 3)"),  # same keys, other shapes
])
@pytest.mark.parametrize("opt", ["adam", "yogi", "adagrad"])
def test_fedopt_refuses_arrays_that_do_not_match_the_global_model(opt, shapes, reason):
    g = np.random.default_rng(1)
    init = [g.standard_normal((7, 3)).astype(np.float32) for _ in range(4)]
    s = strategy_for("fedavg", server_opt=opt, server_lr=0.1, num_clients=1)
    msgs = _configure(s, _arrays(init), 1)
    reply = _reply(msgs[0], RecordDict({"arrays": _arrays([g.standard_normal(sh).astype(np.float32) for sh in shapes]),
                                        "metrics": MetricRecord({"num-examples": 3})}))
    arrays, _ = s.aggregate_train(1, [reply])
    moved = any(not np.array_equal(a, b) for a, b in zip(arrays.to_numpy_ndarrays(), init))
    if reason is None:
        assert s.last_record.replied == [0] and moved
    else:
        assert reason in s.last_record.rejected[0] and not moved
