"""Aggregator.apply: the input and output checks run once, in the base class,
for every rule -- a built-in one (FedAvg) and a user's subclass that does no
checks of its own get exactly the same protection."""
from __future__ import annotations

import numpy as np
import pytest
from aggtools import ctx, info, upd

from fedagg.aggregators import Aggregator, build
from fedagg.aggregators.base import AggregatorContext, InvalidUpdate


class PlainMean(Aggregator):
    """A user's rule: the unweighted mean, no checks at all."""

    name = "plain_mean"

    def aggregate(self, global_params, updates, info):
        if not updates:
            return global_params, {}
        return {k: np.mean([u.params[k] for u in updates], axis=0) for k in global_params}, {}


class ReturnsNaN(Aggregator):
    name = "returns_nan"

    def aggregate(self, global_params, updates, info):
        return {k: np.full_like(v, np.nan) for k, v in global_params.items()}, {}


class DropsATensor(Aggregator):
    name = "drops_a_tensor"

    def aggregate(self, global_params, updates, info):
        return {k: v for k, v in list(global_params.items())[1:]}, {}


def X():
    return {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def P(v=1.0):
    return {"w": np.full((2, 3), v, np.float32), "b": np.full(3, v, np.float32)}


def rules(n=2):
    return {"fedavg": build("fedavg", ctx(n=n)), "user": PlainMean(ctx(n=n))}


# each check, named; (updates, RoundInfo) for a 2-client run, and the message it must give
CASES = {
    "id_out_of_range": (lambda: [upd(7, P())], lambda: info(1, 2, [7]), "outside 0..1"),
    "negative_id": (lambda: [upd(-1, P())], lambda: info(1, 2, [0], asked=[0]), "outside 0..1"),
    "duplicate_id": (lambda: [upd(1, P()), upd(1, P(2.0))], lambda: info(1, 2, [1]), "client 1"),
    "missing_parameter": (lambda: [upd(0, {"w": P()["w"]})], lambda: info(1, 2, [0]), "client 0: parameter names"),
    "unexpected_parameter": (lambda: [upd(0, {**P(), "z": np.zeros(1)})], lambda: info(1, 2, [0]), "unexpected"),
    "shape": (lambda: [upd(1, {**P(), "b": np.zeros(4, np.float32)})], lambda: info(1, 2, [1]), "client 1: 'b' has shape"),
    "nan": (lambda: [upd(0, P(np.nan))], lambda: info(1, 2, [0]), "client 0: .* non-finite"),
    "inf": (lambda: [upd(1, P(np.inf))], lambda: info(1, 2, [1]), "client 1: .* non-finite"),
    "zero_examples": (lambda: [upd(0, P(), n=0)], lambda: info(1, 2, [0]), "num_examples=0"),
    "label_hist_length": (lambda: [upd(0, P(), hist=[1, 2])], lambda: info(1, 2, [0]), "label_hist has shape"),
    "label_hist_negative": (lambda: [upd(0, P(), hist=[1, -1, 2])], lambda: info(1, 2, [0]), "negative"),
    "roundinfo_num_clients": (lambda: [upd(0, P())], lambda: info(1, 3, [0]), "num_clients=3"),
    "roundinfo_replied_differs": (lambda: [upd(0, P())], lambda: info(1, 2, [1]), "RoundInfo.replied"),
    "roundinfo_replied_not_asked": (lambda: [upd(0, P())], lambda: info(1, 2, [0], asked=[1]), "not asked"),
}


@pytest.mark.parametrize("rule", ["fedavg", "user"])
@pytest.mark.parametrize("check", sorted(CASES))
def test_apply_refuses_bad_input(rule, check):
    ups, inf, match = CASES[check]
    agg = rules()[rule]
    with pytest.raises(InvalidUpdate, match=match):
        agg.apply(X(), ups(), inf())


def test_fedavg_called_directly_refuses_client_7_and_never_returns_nan():
    agg = build("fedavg", ctx(n=2))
    with pytest.raises(ValueError, match="client 7: id outside 0..1"):
        agg.apply(X(), [upd(0, P()), upd(7, P())], info(1, 2, [0, 7]))
    with pytest.raises(ValueError, match="non-finite"):
        agg.apply(X(), [upd(0, P()), upd(1, P(np.nan))], info(1, 2, [0, 1]))
    out, m = agg.apply(X(), [upd(0, P(1.0), n=1), upd(1, P(4.0), n=3)], info(1, 2, [0, 1]))
    np.testing.assert_allclose(out["w"], 3.25)
    assert m["weight_clients"] == [0, 1]


def test_user_rule_gets_checked_input_and_its_output_is_checked():
    out, _ = PlainMean(ctx(n=2)).apply(X(), [upd(0, P(1.0)), upd(1, P(3.0))], info(1, 2, [0, 1]))
    np.testing.assert_array_equal(out["b"], np.full(3, 2.0))
    with pytest.raises(FloatingPointError, match="'returns_nan' produced non-finite values"):
        ReturnsNaN(ctx(n=2)).apply(X(), [upd(0, P())], info(1, 2, [0]))
    with pytest.raises(InvalidUpdate, match="'drops_a_tensor' returned parameters"):
        DropsATensor(ctx(n=2)).apply(X(), [], info(1, 2, []))


def test_rule_that_needs_label_hist_says_so():
    class NeedsHist(PlainMean):
        needs_label_hist = True

    with pytest.raises(InvalidUpdate, match="client 1: aggregator 'plain_mean' needs each client's label_hist"):
        NeedsHist(ctx(n=2)).apply(X(), [upd(1, P())], info(1, 2, [1]))
    with pytest.raises(InvalidUpdate, match="client 0: aggregator 'feddisco' needs"):
        build("feddisco", ctx(n=2, c=3)).apply(X(), [upd(0, P())], info(1, 2, [0]))


def test_overriding_apply_is_refused():
    with pytest.raises(TypeError, match="overrides Aggregator.apply"):

        class Sneaky(Aggregator):
            def apply(self, global_params, updates, info):
                return global_params, {}


def test_context_holds_only_what_the_rule_declares():
    full = AggregatorContext(
        num_clients=4, num_classes=3, seed=1, model_fn=lambda: None, init_params_fn=lambda c: {},
        proxy_data=(np.zeros((2, 1)), np.zeros(2)), oracle_participation_probs=np.full(4, 0.5),
    )
    seen = {name: build(name, full) if name != "fedlaw" else None for name in ("fedavg", "fedau", "known_prob", "ida")}
    for name in ("fedavg", "fedau", "ida"):
        c = seen[name].ctx
        assert c.oracle_participation_probs is None and c.proxy_data is None
        assert c.model_fn is None and c.init_params_fn is None
    assert seen["known_prob"].ctx.oracle_participation_probs is not None
    assert PlainMean(full).ctx.oracle_participation_probs is None  # a user rule declares nothing
    g = build("gossip", full, independent_init=True)
    assert g.ctx.init_params_fn is not None and g.ctx.oracle_participation_probs is None
