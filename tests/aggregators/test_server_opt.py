"""Server optimisers: the two momentum forms (FedAvgM / official FedDisco) and
FedAdam, FedYogi, FedAdagrad, with worked numbers and against Flower's own
strategies on the same inputs."""
from __future__ import annotations

import numpy as np
import pytest
from aggtools import ctx, info, upd

from fedagg.aggregators import build
from fedagg.aggregators.server_opt import ServerOptimizer

ONE = {"w": np.array([1.0])}


def scalar_round(agg, x, targets, rnd, hist=None):
    """Two equal clients at ``targets`` (so x̄ = their mean); returns x_{t+1}."""
    ups = [upd(k, {"w": np.array([t])}, n=10, hist=hist) for k, t in enumerate(targets)]
    out, _ = agg.apply({"w": np.array([x])}, ups, info(rnd, 2, [0, 1]))
    return float(out["w"][0])


def test_heavy_ball_and_ema_momentum_worked_numbers():
    # clients at 2 and 4 -> x̄ = 3 every round, x_0 = 0, β = 0.5
    hb = build("fedavg", ctx(n=2), server_momentum=0.5)  # v ← βv + (x − x̄), x ← x − v
    x1 = scalar_round(hb, 0.0, (2.0, 4.0), 1)  # v = −3 → x = 3
    x2 = scalar_round(hb, x1, (2.0, 4.0), 2)  # v = −1.5 + 0 → x = 4.5
    assert (x1, x2) == pytest.approx((3.0, 4.5))
    ema = build("fedavg", ctx(n=2), server_momentum=0.5, server_momentum_form="ema")
    y1 = scalar_round(ema, 0.0, (2.0, 4.0), 1)  # v = 0.5·(0 − 3) = −1.5 → x = 1.5
    y2 = scalar_round(ema, y1, (2.0, 4.0), 2)  # v = −0.75 + 0.5·(1.5 − 3) = −1.5 → x = 3
    assert (y1, y2) == pytest.approx((1.5, 3.0))


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_forms_agree_when_heavy_ball_lr_is_one_minus_beta(beta):
    g = np.random.default_rng(0)
    hb = build("fedavg", ctx(n=2), server_momentum=beta, server_lr=1 - beta)
    ema = build("fedavg", ctx(n=2), server_momentum=beta, server_momentum_form="ema")
    x = y = 0.0
    for r in range(1, 11):
        t = tuple(g.normal(size=2))
        x, y = scalar_round(hb, x, t, r), scalar_round(ema, y, t, r)
        assert x == pytest.approx(y, rel=1e-12, abs=1e-12)


def test_feddisco_momentum_defaults_to_the_official_form():
    # official FedDisco (β = 0.9): v ← βv + (1−β)(x − x̄), x ← x − v, two equal uniform clients
    agg = build("feddisco", ctx(n=2, c=2), server_momentum=0.9)
    x1 = scalar_round(agg, 0.0, (2.0, 4.0), 1, hist=[1, 1])  # v = 0.1·(−3) = −0.3 → x = 0.3
    x2 = scalar_round(agg, x1, (2.0, 4.0), 2, hist=[1, 1])  # v = −0.27 + 0.1·(0.3 − 3) = −0.54 → 0.84
    assert (x1, x2) == pytest.approx((0.3, 0.84))
    old = build("feddisco", ctx(n=2, c=2), server_momentum=0.9, server_momentum_form="heavy_ball")
    assert scalar_round(old, 0.0, (2.0, 4.0), 1, hist=[1, 1]) == pytest.approx(3.0)


# Two rounds by hand, x_0 = 0 and both clients at 1 (x̄ = 1), Flower's defaults
# β₁ = 0.9, β₂ = 0.99, τ = 1e-3:
#  adam (η = 0.1): Δ₁ = 1, m₁ = 0.1, v₁ = 0.01, η₁ = 0.1·√(1−0.99²)/(1−0.9²) = 0.0742460,
#    x₁ = η₁·0.1/(0.1 + 0.001) = 0.0735109; Δ₂ = 0.9264891, m₂ = 0.09 + 0.0926489 = 0.1826489,
#    v₂ = 0.0099 + 0.01·Δ₂² = 0.0184838, η₂ = 0.1·√(1−0.99³)/(1−0.9³) = 0.0635940,
#    x₂ = x₁ + η₂·m₂/(√v₂ + τ) = 0.1583224
#  yogi (η = 0.01): v₁ = 0 − 0.01·1·sign(0 − 1) = 0.01, x₁ = 0.01·0.1/0.101 = 0.0099010;
#    Δ₂ = 0.9900990, m₂ = 0.1890099, v₂ = 0.01 + 0.01·Δ₂² = 0.0198030, x₂ = 0.0232376
#  adagrad (η = 0.1, m = Δ): v₁ = 1, x₁ = 0.1/1.001 = 0.0999001; Δ₂ = 0.9000999,
#    v₂ = 1 + Δ₂² = 1.8101798, x₂ = x₁ + 0.1·Δ₂/(√v₂ + τ) = 0.1667510
@pytest.mark.parametrize(
    "kind,x1,x2",
    [("adam", 0.0735109, 0.1583224), ("yogi", 0.0099010, 0.0232376), ("adagrad", 0.0999001, 0.1667510)],
)
@pytest.mark.parametrize("rule", ["fedavg", "feddisco", "avg_participating"])
def test_fedopt_two_rounds_by_hand(kind, x1, x2, rule):
    agg = build(rule, ctx(n=2, c=2), server_opt=kind)  # server_lr=None: Flower's default η
    h = [1, 1] if rule == "feddisco" else None
    got1 = scalar_round(agg, 0.0, (1.0, 1.0), 1, hist=h)
    got2 = scalar_round(agg, got1, (1.0, 1.0), 2, hist=h)
    assert (got1, got2) == pytest.approx((x1, x2), abs=5e-7)


def test_fedopt_state_survives_a_checkpoint():
    a = build("fedau", ctx(n=2), server_opt="adam")
    x1 = scalar_round(a, 0.0, (1.0, 3.0), 1)
    b = build("fedau", ctx(n=2), server_opt="adam")
    b.load_state_dict(a.state_dict())
    assert scalar_round(a, x1, (1.0, 3.0), 2) == scalar_round(b, x1, (1.0, 3.0), 2)


def test_bn_statistics_and_integer_buffers_are_not_stepped():
    x = {"w": np.zeros(2, np.float32), "bn.running_var": np.ones(2, np.float32),
         "bn.num_batches_tracked": np.array(5)}
    ups = [upd(k, {"w": np.full(2, v, np.float32), "bn.running_var": np.full(2, 0.1 * (k + 1), np.float32),
                   "bn.num_batches_tracked": np.array(7 + k)}, n=10 + 10 * k) for k, v in enumerate((1.0, 2.0))]
    out, _ = build("fedavg", ctx(n=2), server_opt="adam", server_lr=5.0).apply(x, ups, info(1, 2, [0, 1]))
    np.testing.assert_allclose(out["bn.running_var"], (0.1 * 10 + 0.2 * 20) / 30, rtol=1e-6)  # x̄'s
    assert int(out["bn.num_batches_tracked"]) == 8  # from the client with the largest weight
    assert out["w"].dtype == np.float32 and not np.allclose(out["w"], 5 / 3)


@pytest.mark.parametrize(
    "opts,match",
    [({"server_opt": "rmsprop"}, "server_opt='rmsprop'"), ({"server_momentum_form": "nesterov"}, "momentum_form"),
     ({"server_opt": "adam", "server_momentum": 0.9}, "server_momentum=0.9 applies to server_opt=sgd"),
     ({"server_beta_2": 1.0}, "server_beta_2=1.0"), ({"server_tau": 0.0}, "server_tau=0.0"),
     ({"server_lr": -1.0}, "server_lr=-1.0")],
)
def test_bad_server_options_name_the_key(opts, match):
    with pytest.raises(ValueError, match=match):
        build("fedavg", ctx(n=2), **opts)


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_equals_flowers_fedopt_strategies_on_the_same_inputs(kind):
    """Flower's FedAdam/FedYogi/FedAdagrad aggregate_train (size-weighted mean,
    then its FedOpt step) vs fedavg with server_opt=kind, 3 rounds, 2 tensors."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import strategy as fs

    from fedagg.runtime.inprocess import set_task_identity

    set_task_identity()
    cls = {"adam": fs.FedAdam, "yogi": fs.FedYogi, "adagrad": fs.FedAdagrad}[kind]
    flower = cls(eta=0.05, tau=1e-2)
    ours = build("fedavg", ctx(n=3), server_opt=kind, server_lr=0.05, server_tau=1e-2)
    g = np.random.default_rng(3)
    x = {"a.weight": g.normal(size=(3, 2)), "a.bias": g.normal(size=3)}
    for rnd in (1, 2, 3):
        ups, replies = [], []
        for k in range(3):
            p = {n: v + g.normal(scale=0.3, size=v.shape) for n, v in x.items()}
            n = int(g.integers(5, 50))
            ups.append(upd(k, p, n=n))
            content = RecordDict({"arrays": ArrayRecord({n_: Array(v) for n_, v in p.items()}),
                                  "metrics": MetricRecord({"num-examples": n})})
            replies.append(Message(content=content, dst_node_id=k + 1, message_type="train"))
        flower.current_arrays = {n: v.copy() for n, v in x.items()}
        arrays, _ = flower.aggregate_train(rnd, replies)
        x, _ = ours.apply(x, ups, info(rnd, 3, [0, 1, 2]))
        for n, v in x.items():
            np.testing.assert_allclose(v, arrays[n].numpy(), rtol=1e-10, atol=1e-12)


def test_server_optimizer_identity_and_legacy_velocity_checkpoint():
    assert ServerOptimizer().identity and not ServerOptimizer(lr=0.5).identity
    opt = ServerOptimizer(momentum=0.5)
    opt.load_state_dict({"velocity": {"w": np.array([-2.0])}})  # pre-FedOpt checkpoints
    out = opt.step(ONE, {"w": np.array([1.0])}, 3)  # v = −1 − 1 = −2 → x = 1 + 2
    assert float(out["w"][0]) == pytest.approx(3.0)
