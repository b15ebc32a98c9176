"""The asynchronous modes (server.mode = fedasync | fedbuff | fedfix): the event schedule on a 3-client clock
worked by hand, the three server updates against their formulas, the logs of a run, an equivalence with
synchronous FedAvg, 1 vs 2 Ray workers, and the refusals (one line, exit 2, before training)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import tempfile

import numpy as np
import pytest
import torch
from fedagg_testing import ROOT, SMALL, compose, fedagg_cmd

from fedagg.aggregators.asynchronous import Applied, AsyncServerStep, staleness_weight
from fedagg.aggregators.base import AggregatorContext, ClientUpdate, RoundInfo
from fedagg.aggregators.fedavg import FedAvg
from fedagg.env.clock import ClientTime
from fedagg.env.devices import Device
from fedagg.env.events import Schedule
from fedagg.errors import ConfigError
from fedagg.experiment import run

DURATION = {0: 1.0, 1: 2.0, 2: 5.0}  # client -> simulated seconds of every one of its jobs


class FixedClock:
    """A clock whose client c always takes DURATION[c] seconds (3 steps)."""

    def timing(self, round: int, client: int) -> ClientTime:
        d = Device(1.0, 1.0, 1.0, 0.0)
        return ClientTime(client, d, {}, 3, 0.0, DURATION[client], 0.0, "ok")


def schedule(mode: str, n: int, **kw) -> list[tuple[int, float, list[tuple[int, int]]]]:
    s = Schedule(mode, FixedClock(), 3, seed=0, concurrency=3, **kw)
    out = []
    for _ in range(n):
        st = s.advance()
        out.append((st.version, st.time_s, [(j.client, st.staleness(j)) for j in st.applied]))
    return out


# ---------------------------------------------------------------- the schedule, by hand
def test_fedasync_schedule_by_hand():
    # t=0: all 3 sent v0. c0@1 -> v1 (c0 fresh), c0 resent v1 -> @2. At t=2 c0 (v1) and c1 (v0) tie: client
    # id first: v2 = c0 (tau 2-1-1 = 0), c0 resent v2 -> @3; v3 = c1 (tau 3-1-0 = 2), c1 resent v3 -> @4;
    # v4 = c0@3 (tau 4-1-2 = 1), resent v4 -> @4; at t=4: v5 = c0 (tau 0), v6 = c1 (tau 6-1-3 = 2);
    # c0 resent v5 @5 and c2 (sent v0) @5 tie: v7 = c0 (tau 7-1-5 = 1), v8 = c2 (tau 8-1-0 = 7)
    assert schedule("fedasync", 8) == [
        (1, 1.0, [(0, 0)]), (2, 2.0, [(0, 0)]), (3, 2.0, [(1, 2)]), (4, 3.0, [(0, 1)]),
        (5, 4.0, [(0, 0)]), (6, 4.0, [(1, 2)]), (7, 5.0, [(0, 1)]), (8, 5.0, [(2, 7)]),
    ]


def test_fedbuff_schedule_by_hand():
    # K=2. c0@1 waits (it was sent v0 already, so no one is dispatched); c1@2 fills the buffer: v1 at t=2.
    # c0, c1 sent v1: @3, @4 -> v2 at t=4. c0, c1 sent v2: @5, @6; c2 (sent v0) @5: c0 then c2 -> v3 at t=5,
    # c2's staleness 3-1-0 = 2.
    assert schedule("fedbuff", 3, buffer_size=2) == [
        (1, 2.0, [(0, 0), (1, 0)]), (2, 4.0, [(0, 0), (1, 0)]), (3, 5.0, [(0, 0), (2, 2)]),
    ]


def test_fedfix_schedule_by_hand():
    # window 2 s: (0,2]: c0@1, c1@2 (on the boundary: this window) -> v1 at 2; (2,4]: c0@3, c1@4 -> v2 at 4;
    # (4,6]: c0@5, c2@5 (tie: client id; c2 is resent v2, back at 10), c1@6 -> v3 at 6; (6,8]: c0@7, c1@8 -> v4
    assert schedule("fedfix", 4, window_s=2.0) == [
        (1, 2.0, [(0, 0), (1, 0)]), (2, 4.0, [(0, 0), (1, 0)]), (3, 6.0, [(0, 0), (2, 2), (1, 0)]),
        (4, 8.0, [(0, 0), (1, 0)]),
    ]


def test_an_empty_fedfix_window_is_an_update_with_nothing_applied():
    # c0 (sent v0) arrives at 1.0 s: windows (0, 0.4] and (0.4, 0.8] are empty; v3 at 1.2 applies c0, stale 2
    got = schedule("fedfix", 3, window_s=0.4)
    assert [(v, a) for v, _, a in got] == [(1, []), (2, []), (3, [(0, 2)])]
    assert [t for _, t, _ in got] == pytest.approx([0.4, 0.8, 1.2])


class OffClock(FixedClock):
    """Client 2's device is off in rounds 1-2 and client 1 has a planned crash in round 1 (outcome != ok)."""

    def timing(self, round: int, client: int) -> ClientTime:
        t = super().timing(round, client)
        if (client == 2 and round <= 2) or (client == 1 and round == 1):
            return ClientTime(client, t.device, {}, 3, 0.0, math.inf if client == 2 else 2.0, 0.0,
                              "off" if client == 2 else "crash")
        return t


def test_a_client_whose_device_is_off_or_faulty_is_not_sent_that_version():
    s = Schedule("fedasync", OffClock(), 3, seed=0, concurrency=3)
    first = s.advance()
    assert [j.client for j in first.dispatched] == [0]  # 1 crashes and 2 is off in round 1: only 0 goes
    second = s.advance()  # version 1 (round 2): 0 and 1 go, 2 is still off
    assert sorted(j.client for j in second.dispatched) == [0, 1]
    # c0@2 makes v2; round 3: client 2 is back and goes with 0 (1 is still in flight)
    assert sorted(j.client for j in s.advance().dispatched) == [0, 2]


def test_the_schedule_continues_the_same_from_its_state():
    s = Schedule("fedbuff", FixedClock(), 3, seed=0, concurrency=2, buffer_size=2)
    for _ in range(3):
        s.advance()
    t = Schedule("fedbuff", FixedClock(), 3, seed=0, concurrency=2, buffer_size=2)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    a = [s.advance() for _ in range(5)]
    b = [t.advance() for _ in range(5)]
    assert a == b


# ---------------------------------------------------------------- the server updates, by formula
def upd(c: int, n: int, theta: list[float]) -> ClientUpdate:
    return ClientUpdate(c, {"w": np.array(theta, np.float32)}, n)


def test_staleness_functions():
    assert staleness_weight("polynomial", 0, 0.5, 4) == 1.0
    assert staleness_weight("polynomial", 3, 0.5, 4) == pytest.approx(0.5)  # FedBuff 1/sqrt(1+3)
    assert staleness_weight("hinge", 4, 10, 4) == 1.0
    assert staleness_weight("hinge", 6, 10, 4) == pytest.approx(1 / 21)  # 1/(a(tau-b)+1)
    assert staleness_weight("constant", 9, 0.5, 4) == 1.0


def rule(**kw) -> FedAvg:
    return FedAvg(AggregatorContext(num_clients=3, num_classes=2), **kw)


def test_fedasync_mixes_with_alpha_times_staleness():
    x = {"w": np.array([1.0, 0.0], np.float32)}
    step = AsyncServerStep("fedasync", rule(), alpha=0.6, staleness="polynomial", staleness_a=0.5)
    item = Applied(upd(1, 10, [3.0, 2.0]), {"w": np.array([9.0, 9.0], np.float32)}, staleness=2, duration_s=1.0)
    out, w = step.apply(x, [item], RoundInfo(5, 3, (1,), (1,)))
    a = 0.6 / math.sqrt(3)
    assert w.tolist() == pytest.approx([a])
    np.testing.assert_allclose(out["w"], [(1 - a) * 1 + a * 3, a * 2], rtol=1e-6)  # the stale base plays no part


def test_fedbuff_steps_with_the_stale_weighted_mean_delta():
    x = {"w": np.array([1.0, 1.0], np.float32)}
    sent_a, sent_b = {"w": np.array([1.0, 1.0], np.float32)}, {"w": np.array([0.0, 2.0], np.float32)}
    items = [Applied(upd(0, 1, [2.0, 1.0]), sent_a, 0, 1.0), Applied(upd(2, 3, [0.0, 4.0]), sent_b, 3, 4.0)]
    for lr in (1.0, 0.5):
        step = AsyncServerStep("fedbuff", rule(server_lr=lr), staleness="polynomial", staleness_a=0.5)
        out, w = step.apply(x, items, RoundInfo(4, 3, (0, 2), (0, 2)))
        assert w.tolist() == pytest.approx([0.25 * 1, 0.75 * 0.5])  # n_k / sum n times 1/sqrt(1+tau)
        delta = 0.25 * np.array([1.0, 0.0]) + 0.375 * np.array([0.0, 2.0])
        np.testing.assert_allclose(out["w"], 1.0 + lr * delta, rtol=1e-6)


def test_fedbuff_with_feddisco_weights_the_buffer_with_feddisco_times_staleness():
    from fedagg.aggregators.feddisco import FedDisco

    disco = FedDisco(AggregatorContext(num_clients=3, num_classes=2), a=0.5, b=0.1)
    x = {"w": np.array([0.0], np.float32)}
    u0 = ClientUpdate(0, {"w": np.array([1.0], np.float32)}, 4, label_hist=np.array([4, 0]))
    u1 = ClientUpdate(1, {"w": np.array([2.0], np.float32)}, 4, label_hist=np.array([2, 2]))
    items = [Applied(u0, x, 0, 1.0), Applied(u1, x, 1, 1.0)]
    out, w = AsyncServerStep("fedbuff", disco, staleness_a=0.5).apply(x, items, RoundInfo(2, 3, (0, 1), (0, 1)))
    # by hand: n = (0.5, 0.5); KL(D_0||U) = log 2, KL(D_1||U) = 0 -> d = (1, 0) after normalising;
    # w~ = n - 0.5 d + 0.1 = (0.1, 0.6) -> p = (1/7, 6/7); times s = (1, 1/sqrt(2))
    want = [1 / 7, 6 / 7 / math.sqrt(2)]
    assert w.tolist() == pytest.approx(want)
    np.testing.assert_allclose(out["w"], [want[0] * 1.0 + want[1] * 2.0], rtol=1e-6)


def test_fedfix_weights_are_data_share_times_windows_spanned():
    # transcribed from the official code (Accenture/Labs-Federated-Learning, FL/server.py at 1c896f0):
    # agg_weights = ceil(tau_i / delta_t) * P;  new += lr_g * d_i * (received - sent)
    share = np.array([0.5, 0.3, 0.2])
    x = {"w": np.array([0.0], np.float32)}
    items = [Applied(upd(0, 5, [1.0]), {"w": np.array([0.0], np.float32)}, 0, 1.5),
             Applied(upd(2, 2, [3.0]), {"w": np.array([-1.0], np.float32)}, 2, 5.0)]
    step = AsyncServerStep("fedfix", rule(), window_s=2.0, data_share=share)
    out, w = step.apply(x, items, RoundInfo(3, 3, (0, 2), (0, 2)))
    official = [np.ceil(1.5 / 2.0) * 0.5, np.ceil(5.0 / 2.0) * 0.2]
    assert w.tolist() == pytest.approx(official)
    np.testing.assert_allclose(out["w"], [official[0] * 1.0 + official[1] * 4.0], rtol=1e-6)
    out, w = step.apply(x, [], RoundInfo(4, 3, (), ()))
    assert out is x and len(w) == 0


# ---------------------------------------------------------------- runs
TRACE = "client,compute_s_per_step,up_mbps,down_mbps,latency_s\n" + "".join(
    f"{n},{0.0005 * (n + 1) ** 2},10,10,0.01\n" for n in range(6))
BASE = [*SMALL, "rounds=4", "runtime=inprocess", "device_profile=trace"]


@pytest.fixture
def trace(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text(TRACE)
    return f"device_profile.path={p}"


def rows(path):
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def details(path):
    return [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["fedasync", "fedbuff", "fedfix"])
def test_a_run_logs_every_update_its_jobs_staleness_and_weights(mode, trace, tmp_path):
    extra = ["server.concurrency=3", "server.buffer_size=2", "server.window_s=1.0", "server.staleness=hinge",
             "server.staleness_a=2", "server.staleness_b=0"]
    run(compose(*BASE, trace, f"server.mode={mode}", *extra), tmp_path / "r")
    m, d = rows(tmp_path / "r"), details(tmp_path / "r")
    assert [int(r["model_version"]) for r in m] == [1, 2, 3, 4] == [r["round"] for r in d]
    times = [float(r["sim_time_s"]) for r in m]
    assert times == sorted(times) and times[0] > 0
    sent: dict[int, dict] = {}
    for r, line in zip(m, d):
        a = line["async"]
        for j in a["dispatched"]:
            assert j["version"] == int(r["model_version"]) - 1 and j["arrival_s"] > j["dispatch_s"]
            sent[j["seq"]] = j
        assert line["replied"] == [j["client"] for j in a["applied"]]
        for j in a["applied"]:
            assert sent[j["seq"]]["arrival_s"] == j["arrival_s"] <= a["time_s"] + 1e-9  # dispatched earlier
            assert j["staleness"] == int(r["model_version"]) - 1 - j["version"]
            s = 1.0 if j["staleness"] <= 0 else 1.0 / (2 * j["staleness"] + 1)
            if mode == "fedasync":
                assert j["weight"] == pytest.approx(0.6 * s)
            if mode == "fedfix":
                assert a["time_s"] == pytest.approx(int(r["model_version"]) * 1.0)
        if mode == "fedbuff":  # FedAvg's weights on the buffer sum to 1 once the staleness weight is divided out
            assert len(a["applied"]) == 2
            assert sum(j["weight"] / (1.0 if j["staleness"] <= 0 else 1.0 / (2 * j["staleness"] + 1))
                       for j in a["applied"]) == pytest.approx(1.0)
        order = [(j["arrival_s"], j["client"]) for j in a["applied"]]
        assert order == sorted(order)
    assert (tmp_path / "r" / "devices.csv").read_text().splitlines()[0] == TRACE.splitlines()[0]
    got = list(csv.DictReader(open(tmp_path / "r" / "devices.csv")))
    assert [float(g["compute_s_per_step"]) for g in got] == [0.0005 * (n + 1) ** 2 for n in range(6)]


@pytest.mark.parametrize("rule", ["feddisco", "fedau"])
def test_fedbuff_runs_feddisco_and_fedau(rule, trace, tmp_path):
    run(compose(*BASE, trace, "rounds=3", f"aggregator={rule}", "server.mode=fedbuff", "server.concurrency=4",
                "server.buffer_size=3"), tmp_path / "r")
    for line in details(tmp_path / "r"):
        assert len(line["async"]["applied"]) == 3
        assert all(0 < j["weight"] <= (1 if rule == "feddisco" else 2) for j in line["async"]["applied"])


def test_fedbuff_with_fedau_counts_participation_intervals_in_server_updates():
    from fedagg.aggregators.fedau import FedAU

    fedau = FedAU(AggregatorContext(num_clients=3, num_classes=2))
    step = AsyncServerStep("fedbuff", fedau, staleness="constant")
    x = {"w": np.array([0.0], np.float32)}

    def apply(version, clients):
        items = [Applied(upd(c, 1, [1.0]), x, 0, 1.0) for c in clients]
        return step.apply(x, items, RoundInfo(version, 3, tuple(sorted(set(clients))), tuple(clients)))[1].tolist()

    # v1: no interval closed yet: omega = 1 for all, weights 1/N; v1 applies 0 and 2 (intervals of 1 closed)
    assert apply(1, [0, 2]) == pytest.approx([1 / 3, 1 / 3])
    # v2 applies 1 and 0: client 1 has no closed interval (1), client 0 closed one of 1 -> 1
    assert apply(2, [1, 0]) == pytest.approx([1 / 3, 1 / 3])
    # after v2 client 1 closed an interval of 2 updates; client 2's first interval (1) holds: omega = (2, 1)
    assert apply(3, [1, 2]) == pytest.approx([2 / 3, 1 / 3])
    # a skipped update number counts as one in which nobody took part: client 0's open interval is 3 at v5
    assert apply(5, [0]) == pytest.approx([1 / 3])
    assert fedau.estimator.omega[0] == pytest.approx((1 + 1 + 3) / 3)


def test_fedbuff_with_the_whole_federation_in_one_buffer_is_synchronous_fedavg(trace, tmp_path):
    """K = concurrency = N: every update waits for all clients, each fresh: FedAvg's round, to float rounding
    (x + sum w (theta - x) against sum w theta)."""
    run(compose(*BASE, trace), tmp_path / "sync")
    run(compose(*BASE, trace, "server.mode=fedbuff", "server.concurrency=6", "server.buffer_size=6"),
        tmp_path / "buff")
    a, b = torch.load(tmp_path / "sync" / "model.pt"), torch.load(tmp_path / "buff" / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert all(j["staleness"] == 0 for line in details(tmp_path / "buff") for j in line["async"]["applied"])
    assert [float(r["sim_time_s"]) for r in rows(tmp_path / "buff")] == \
        pytest.approx([float(r["sim_time_s"]) for r in rows(tmp_path / "sync")])


@pytest.mark.parametrize("mode", ["fedbuff", "fedfix"])
def test_waiting_to_train_gives_every_job_the_numbers_of_training_it_at_dispatch(mode, monkeypatch, trace, tmp_path):
    """Jobs train when one of them is due, not when dispatched; each job's numbers are those of training it at
    once. In fedbuff and fedfix a client can wait with two jobs (its arrived one, untrained, and the next it was
    sent): both train, in separate calls (one call's replies are matched by node; in one call the second job's
    reply stood for both)."""
    from fedagg.flower import async_loop as al

    def at_dispatch(self, grid, timeout):  # the reference: every dispatched batch trained at once
        st = self.schedule.advance()
        trained = 0
        if st.dispatched:
            self.waiting.append(al.Waiting(st.version, list(st.dispatched), self.strategy.params))
            trained = self._train(st.version, grid, timeout)
        return self.apply(st, [j.log() for j in st.dispatched], trained)

    common = [*BASE, trace, "rounds=8", "runtime.vectorize=false", f"server.mode={mode}", "server.concurrency=5",
              "server.buffer_size=3", "server.window_s=0.6"]
    run(compose(*common), tmp_path / "waits")
    with monkeypatch.context() as m:
        m.setattr(al.AsyncLoop, "update", at_dispatch)
        run(compose(*common), tmp_path / "at_once")
    d = details(tmp_path / "waits")
    seen: dict[int, int] = {}  # a client with a second job dispatched before its first was applied
    twice = False
    for line in d:
        for j in line["async"]["dispatched"]:
            twice |= j["client"] in seen
            seen[j["client"]] = j["seq"]
        for j in line["async"]["applied"]:
            seen.pop(j["client"], None)
    assert twice, "no client had two jobs waiting: the case under test did not happen"
    drop = ("round_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "waits")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "at_once")]
    ma, mb = torch.load(tmp_path / "waits" / "model.pt"), torch.load(tmp_path / "at_once" / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_fedasync_trains_jobs_of_several_versions_in_one_stack_with_each_ones_numbers(tmp_path):
    """FedAsync sends one job per server update, each with a new model version; the jobs wait until one of them
    is due and then train together, stacked across versions (each client on its own round's shuffle stream).
    The stacked run equals the client-by-client run to float rounding; with the stack's first round used for
    every client, the shuffles differ and so do the models."""
    common = [*SMALL, "rounds=12", "runtime=inprocess", "device_profile=lognormal", "server.mode=fedasync",
              "server.concurrency=4"]
    run(compose(*common, "runtime.vectorize=true"), tmp_path / "stacked")
    run(compose(*common, "runtime.vectorize=false"), tmp_path / "one")
    d = details(tmp_path / "stacked")
    trained = [line["async"]["trained"] for line in d]
    versions = {}  # jobs trained together: the versions they were sent
    pending: list[int] = []
    for line in d:
        pending += [j["version"] for j in line["async"]["dispatched"]]
        if line["async"]["trained"]:
            versions[line["round"]] = set(pending[: line["async"]["trained"]])
            pending = pending[line["async"]["trained"]:]
    assert sum(t > 0 for t in trained) < len(d) and max(trained) > 1, trained  # batches, not a call per update
    assert any(len(v) > 1 for v in versions.values()), versions  # a stack of several model versions
    assert trained == [line["async"]["trained"] for line in details(tmp_path / "one")]
    a, b = rows(tmp_path / "stacked"), rows(tmp_path / "one")
    assert [float(r["test_accuracy"]) for r in a] == pytest.approx([float(r["test_accuracy"]) for r in b], abs=1e-9)
    ma, mb = torch.load(tmp_path / "stacked" / "model.pt"), torch.load(tmp_path / "one" / "model.pt")
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ray_worker_count_does_not_change_an_async_run(trace, tmp_path):
    pytest.importorskip("ray")
    from fedagg.runtime import ray_grid

    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fedagg_ray", dir="/tmp")
    common = [*SMALL, "rounds=4", "runtime=ray", "device_profile=lognormal", "server.mode=fedbuff",
              "server.concurrency=4", "server.buffer_size=2"]
    try:
        ray_grid.shutdown()
        run(compose(*common, "runtime.num_workers=1", "runtime.batch_size=auto"), tmp_path / "one")
        ray_grid.shutdown()
        run(compose(*common, "runtime.num_workers=2", "runtime.batch_size=2"), tmp_path / "two")
    finally:
        ray_grid.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
    drop = ("round_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "one")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "two")]
    assert [d["async"] for d in details(tmp_path / "one")] == [d["async"] for d in details(tmp_path / "two")]
    ma, mb = torch.load(tmp_path / "one" / "model.pt"), torch.load(tmp_path / "two" / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


# ---------------------------------------------------------------- refusals
ASYNC = ["device_profile=lognormal", "server.mode=fedbuff"]


@pytest.mark.parametrize("overrides, words", [
    (["server.mode=later"], ["server.mode='later'", "sync, fedasync, fedbuff, fedfix"]),
    ([*ASYNC, "server.concurrency=0"], ["server.concurrency=0", "1..num_clients (6)"]),
    ([*ASYNC, "server.buffer_size=0"], ["server.buffer_size=0", "1..num_clients"]),
    (["device_profile=lognormal", "server.mode=fedfix"], ["server.window_s=None", "needs a window > 0"]),
    (["device_profile=lognormal", "server.mode=fedfix", "server.window_s=0"], ["server.window_s=0.0"]),
    (["server.mode=fedasync"], ["server.mode='fedasync'", "virtual clock", "device_profile="]),
    ([*ASYNC, "aggregator=fedlaw"], ["aggregator=fedlaw does not run with server.mode=fedbuff", "proxy"]),
    ([*ASYNC, "aggregator=gossip"], ["aggregator=gossip", "no server model"]),
    ([*ASYNC, "aggregator=ida"], ["aggregator=ida", "whole round"]),
    (["device_profile=lognormal", "server.mode=fedfix", "server.window_s=1", "aggregator=feddisco"],
     ["aggregator=feddisco does not run with server.mode=fedfix", "data shares", "runs fedavg"]),
    (["device_profile=lognormal", "server.mode=fedasync", "aggregator=feddisco"],
     ["aggregator=feddisco does not run with server.mode=fedasync", "single update is 1"]),
    (["device_profile=lognormal", "server.mode=fedasync", "aggregator=fedau"],
     ["aggregator=fedau does not run with server.mode=fedasync", "runs fedavg"]),
    ([*ASYNC, "aggregator=mifa"], ["aggregator=mifa", "synchronous round", "runs fedavg, feddisco, fedau"]),
    ([*ASYNC, "server.alpha=0"], ["server.alpha=0.0", "(0, 1]"]),
    (["device_profile=lognormal", "server.mode=fedasync", "aggregator.server_lr=0.5"],
     ["aggregator.server_opt", "no server optimiser"]),
    ([*ASYNC, "server.deadline_s=2"], ["server.deadline_s=2.0", "no rounds to cut"]),
    ([*ASYNC, "participation=bernoulli"], ["participation='bernoulli'", "participation=full"]),
    ([*ASYNC, "server.staleness=linear"], ["server.staleness='linear'", "polynomial, hinge, constant"]),
])
def test_bad_async_settings_are_refused_before_training(overrides, words, tmp_path):
    with pytest.raises(ConfigError) as e:
        run(compose(*SMALL, "runtime=inprocess", *overrides), tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_cli_refuses_an_async_rule_it_cannot_run_in_one_line_exit_2(tmp_path):
    p = subprocess.run(fedagg_cmd() + [*SMALL, "runtime=inprocess", *ASYNC, "aggregator=gossip",
                                       f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2 and "Traceback" not in out and len(out.splitlines()) == 1, out[-2000:]
    assert out.startswith("config error: aggregator=gossip does not run with server.mode=fedbuff"), out
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- real time (deployment): the shared bookkeeping
def replay_on_real_time(mode: str, n: int, **kw) -> list[tuple[int, float, list[tuple[int, int]]]]:
    """The deployment's schedule (fedagg.env.realtime) fed FixedClock's arrivals in the order they happen:
    the caller observes time and arrivals, the schedule only keeps the books."""
    from fedagg.env.realtime import RealTimeSchedule

    s = RealTimeSchedule(mode, 3, seed=0, concurrency=3, **kw)
    out, now = [], 0.0
    while len(out) < n:
        for c in s.pick(range(3)):
            s.dispatch(c, now)
        def first():
            return min(s.in_flight.values(), key=lambda p: (p.dispatch_s + DURATION[p.client], p.client, p.seq),
                       default=None)

        nxt = first()
        if nxt is not None and s.belongs(nxt.dispatch_s + DURATION[nxt.client]):
            now = nxt.dispatch_s + DURATION[nxt.client]
            s.arrive(nxt.seq, now, steps=3)
        else:
            b = s.boundary()
            now = b if b is not None else now  # fedfix: the window closes before the next arrival
        nxt = first()
        if s.due(now) and not (nxt is not None and s.belongs(nxt.dispatch_s + DURATION[nxt.client])):
            st, _ = s.take(now)
            out.append((st.version, st.time_s, [(j.client, st.staleness(j)) for j in st.applied]))
    return out


@pytest.mark.parametrize("mode, kw", [("fedasync", {}), ("fedbuff", {"buffer_size": 2}), ("fedfix", {"window_s": 2.0}),
                                      ("fedfix", {"window_s": 0.4})])
def test_real_time_books_match_the_virtual_clock_for_the_same_arrivals(mode, kw):
    """Fed the arrivals in the virtual clock's order, the real-time schedule makes the same updates (versions,
    times, the jobs applied in order, their staleness) as the simulation's Schedule (the by-hand tests above)."""
    assert replay_on_real_time(mode, 6, **kw) == schedule(mode, 6, **kw)


def test_real_time_dispatch_timeout_and_buffer():
    from fedagg.env.realtime import RealTimeSchedule

    s = RealTimeSchedule("fedbuff", 4, seed=3, concurrency=2, buffer_size=2)
    first = s.pick([0, 1, 2])  # client 3 is not connected
    assert len(first) == 2 and set(first) <= {0, 1, 2}
    jobs = [s.dispatch(c, 0.0) for c in first]
    assert s.pick([0, 1, 2, 3]) == []  # concurrency 2: no free slot
    assert s.expired(9.9, 10.0) == [] and s.expired(10.0, 10.0) == [j.seq for j in jobs]
    assert s.expired(1e9, None) == []
    s.arrive(jobs[0].seq, 1.5, steps=7)  # a reply
    assert not s.due(1.5)
    again = s.pick([0, 1, 2, 3])  # one slot free; the arrived client was sent this version: not again
    assert len(again) == 1 and again[0] not in first
    s.dispatch(again[0], 1.5)
    s.arrive(jobs[1].seq, 10.0)  # its timeout: arrives as failed, counts in the buffer
    assert s.due(10.0)
    st, dispatched = s.take(10.0)
    assert st.version == 1 and [j.client for j in st.applied] == first and [j.steps for j in st.applied] == [7, 0]
    assert [j.duration_s for j in st.applied] == [1.5, 10.0]
    assert [p.client for p in dispatched] == [*first, again[0]]
    assert set(s.idle([0, 1, 2, 3])) == {0, 1, 2, 3} - {again[0]}  # a new version: every idle client again
    st2_job = s.in_flight[next(iter(s.in_flight))]
    assert st2_job.version == 0  # sent before the update: stale by one when the next update applies it
    s.arrive(st2_job.seq, 11.0)
    s.dispatch(first[0], 11.0)
    s.arrive(s.dispatches - 1, 12.0)
    st, _ = s.take(12.0)
    assert [(j.client, st.staleness(j)) for j in st.applied] == [(again[0], 1), (first[0], 0)]


def test_real_time_update_applies_arrivals_with_the_shared_step():
    """One fedasync update of the deployment's loop goes through AsyncUpdates.apply (the simulation's code):
    x_1 = (1 - a) x_0 + a θ with a = alpha * (tau + 1)^-0.5, and the logged staleness and weight."""
    from fedagg.env.realtime import RealTimeSchedule
    from fedagg.flower.async_loop import AsyncUpdates, Trained
    from fedagg.flower.strategy import FedaggStrategy

    strategy = FedaggStrategy(rule())
    strategy.params = {"w": np.array([1.0, 0.0], np.float32)}
    step = AsyncServerStep("fedasync", strategy.aggregator, alpha=0.6)
    books = RealTimeSchedule("fedasync", 3, seed=0, concurrency=2)
    loop = AsyncUpdates(strategy, step, "fedasync", 2)
    slow, fast = books.dispatch(2, 0.0), books.dispatch(0, 0.0)
    sent = dict(strategy.params)
    loop.trained[fast.seq] = Trained(upd(0, 10, [3.0, 2.0]), sent)
    books.arrive(fast.seq, 1.0)
    rec = loop.apply(*_take(books, 1.0))
    np.testing.assert_allclose(strategy.params["w"], [0.4 * 1 + 0.6 * 3, 0.6 * 2], rtol=1e-6)
    loop.trained[slow.seq] = Trained(upd(2, 10, [0.0, 0.0]), sent)
    books.arrive(slow.seq, 3.0)
    rec = loop.apply(*_take(books, 3.0))
    a = 0.6 / math.sqrt(2)  # tau = 2 - 1 - 0 = 1
    np.testing.assert_allclose(strategy.params["w"], [(1 - a) * 2.2, (1 - a) * 1.2], rtol=1e-6)
    m = rec.agg_metrics
    assert m["model_version"] == 2 and m["sim_time_s"] == 3.0 and m["staleness_max"] == 1
    (applied,) = m["async"]["applied"]
    assert applied["client"] == 2 and applied["staleness"] == 1 and applied["weight"] == pytest.approx(a)
    assert applied["dispatch_s"] == 0.0 and applied["arrival_s"] == 3.0


def _take(books, now):
    st, dispatched = books.take(now)
    return st, [p.log() for p in dispatched]


@pytest.mark.parametrize("overrides, words", [
    (["server.mode=fedasync", "device_profile=lognormal"],
     ["device_profile='lognormal'", "real time", "virtual clock is simulation-only", "device_profile=none"]),
    (["server.mode=fedbuff", "checkpoint.every=1"], ["checkpoint.every=1", "cannot be resumed"]),
    (["server.mode=fedbuff", "aggregator=feddisco", "checkpoint.every=0", "resume=somewhere"],
     ["resume='somewhere'", "start a new run"]),
    (["server.mode=fedasync", "aggregator=feddisco"], ["aggregator=feddisco does not run with server.mode=fedasync"]),
    (["server.mode=fedbuff", "participation=bernoulli"], ["participation='bernoulli'", "participation=full"]),
    (["server.mode=fedfix"], ["server.window_s=None", "real seconds in a deployment"]),
])
def test_deployment_async_settings_are_refused_before_training(overrides, words):
    """In a deployment (fedagg.deploy_app) the asynchronous modes need no device profile -- they run on real
    time -- and refuse one; the rules' and modes' own refusals stay."""
    from fedagg.deploy_app import compose_config

    with pytest.raises(ConfigError) as e:
        compose_config(["dataset=digits", "model=mlp", "num_clients=3", *overrides])
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_deployment_runs_async_modes_without_a_virtual_clock():
    from fedagg.deploy_app import compose_config

    cfg = compose_config("dataset=digits model=mlp num_clients=3 server.mode=fedasync")
    assert cfg.server.mode == "fedasync" and cfg.device_profile["name"] == "none"
    assert cfg.server.round_timeout == 300.0  # a deployment never waits forever for a job
    from fedagg.config import compose as load_composed

    with pytest.raises(ConfigError, match="virtual clock"):  # the same keys in simulation need a device profile
        load_composed(["dataset=digits", "model=mlp", "num_clients=3", "server.mode=fedasync", "runtime=inprocess"])
