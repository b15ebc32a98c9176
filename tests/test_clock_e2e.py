"""The virtual clock end to end: a device profile never changes a training result by itself; a deadline
drops exactly the clients the devices make late, or cuts them to the steps that fit; metrics.csv and
rounds.jsonl carry the simulated time; Ray's worker count changes nothing; bad profiles are refused."""
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

from fedagg.errors import ConfigError
from fedagg.experiment import build, run
from fedagg.flower.client_app import app as real_client_app
from fedagg.runtime.inprocess import InProcessGrid, set_task_identity
from fedagg.server import run_server

BASE = [*SMALL, "rounds=2", "runtime=inprocess"]
# client n: compute 0.001 * (n + 1) s per step at batch 1, 1 Mbit/s both ways, 10 ms latency
TRACE = "client,compute_s_per_step,up_mbps,down_mbps,latency_s\n" + "".join(
    f"{n},{0.001 * (n + 1)},1,1,0.01\n" for n in range(6))


def metrics(path):
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def details(path):
    return [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]


def by_hand(exp, n):
    """Client n's (download + upload, seconds per step, steps) from TRACE, the shard and the model."""
    nbytes = sum(int(np.asarray(v).nbytes) for v in exp.init_params(0).values())
    transfers = 2 * (0.01 + 8 * nbytes / 1e6)
    step = exp.cfg.train.batch_size * 0.001 * (n + 1)
    steps = exp.cfg.train.epochs * math.ceil(exp.fd.train_size(n) / exp.cfg.train.batch_size)
    return transfers, step, steps


@pytest.fixture
def trace(tmp_path):
    p = tmp_path / "devices.csv"
    p.write_text(TRACE)
    return f"device_profile.path={p}"


@pytest.mark.slow
def test_a_device_profile_without_deadline_changes_no_training_result(tmp_path):
    het = ["heterogeneity=stragglers", "heterogeneity.rate=0.5"]
    run(compose(*BASE, *het), tmp_path / "none")
    run(compose(*BASE, *het, "device_profile=lognormal"), tmp_path / "clock")
    a, b = metrics(tmp_path / "none"), metrics(tmp_path / "clock")
    assert "sim_time_s" not in a[0] and all("sim" not in d for d in details(tmp_path / "none"))
    assert [{k: v for k, v in r.items() if k not in ("round_seconds", "sim_time_s")} for r in b] == \
        [{k: v for k, v in r.items() if k != "round_seconds"} for r in a]
    ma, mb = torch.load(tmp_path / "none" / "model.pt"), torch.load(tmp_path / "clock" / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # sim_time_s: the cumulative sum of each round's slowest client, as rounds.jsonl logs them
    ends = [max(c["seconds"] for c in d["sim"]["clients"].values()) for d in details(tmp_path / "clock")]
    assert [float(r["sim_time_s"]) for r in b] == pytest.approx(np.cumsum(ends).tolist(), rel=1e-12)
    d1 = details(tmp_path / "clock")[0]["sim"]["clients"]
    assert set(d1) == {str(c) for c in range(6)} and {"compute_s_per_step", "up_mbps", "down_mbps",
                                                      "latency_s"} == set(d1["0"]["device"])


@pytest.mark.slow
def test_a_deadline_drops_exactly_the_clients_past_it(tmp_path, trace):
    exp = build(compose(*BASE, "device_profile=trace", trace))
    seconds = {}
    for n in range(6):
        transfers, step, steps = by_hand(exp, n)
        seconds[n] = transfers + steps * step
    deadline = float(np.median(list(seconds.values())))
    late = {n for n, s in seconds.items() if s > deadline}
    assert 0 < len(late) < 6
    rows = run(compose(*BASE, "device_profile=trace", trace, f"server.deadline_s={deadline}"), tmp_path / "run")
    for d in details(tmp_path / "run"):
        assert {int(c) for c in d["failed"]} == late
        assert all("deadline" in why for why in d["failed"].values())
        assert set(d["replied"]) == set(range(6)) - late
        assert {int(c) for c, t in d["sim"]["clients"].items() if t["outcome"] == "late"} == late
        assert {int(c): t["seconds"] for c, t in d["sim"]["clients"].items()} == pytest.approx(seconds, rel=1e-12)
    assert [r["sim_time_s"] for r in rows] == pytest.approx([deadline, 2 * deadline], rel=1e-12)


def test_devices_csv_replays_a_per_round_trace_whole(tmp_path):
    """A trace whose devices change over rounds is written back whole (with its round column), and reading
    devices.csv as a trace gives every client's device in every round; a drawn profile writes one row each."""
    from fedagg.env.devices import TraceDevices

    trace = tmp_path / "t.csv"
    trace.write_text("client,compute_s_per_step,up_mbps,down_mbps,latency_s,round\n" + "".join(
        f"{n},{0.001 * (n + 1)},1,1,0.01,1\n" for n in range(6)) + "2,0.05,0.5,2,0.2,2\n4,inf,1,1,0.01,2\n")
    run(compose(*BASE, "device_profile=trace", f"device_profile.path={trace}"), tmp_path / "run")
    written = tmp_path / "run" / "devices.csv"
    assert written.read_text().splitlines()[0].endswith(",round") and len(written.read_text().splitlines()) == 9
    a, b = TraceDevices(6, 0, path=str(trace)), TraceDevices(6, 0, path=str(written))
    assert [[b.device(r, c) for c in range(6)] for r in (1, 2, 3)] == \
        [[a.device(r, c) for c in range(6)] for r in (1, 2, 3)]
    assert a.device(2, 2) != a.device(1, 2)
    run(compose(*BASE, "device_profile=lognormal"), tmp_path / "drawn")
    lines = (tmp_path / "drawn" / "devices.csv").read_text().splitlines()
    assert lines[0] == "client,compute_s_per_step,up_mbps,down_mbps,latency_s" and len(lines) == 7


@pytest.mark.slow
def test_partial_mode_trains_exactly_the_steps_that_fit(tmp_path, trace):
    exp = build(compose(*BASE, "device_profile=trace", trace, "server.deadline_s=1.5",
                        "server.deadline_mode=partial"))
    want, back = {}, {}
    for n in range(6):
        transfers, step, steps = by_hand(exp, n)
        want[n] = min(steps, math.floor((1.5 - transfers) / step + 1e-9))
        back[n] = transfers + want[n] * step
    assert any(want[n] < by_hand(exp, n)[2] for n in range(6)) and min(want.values()) >= 1
    seen: dict[tuple[int, int], int] = {}

    def app(msg, ctx):
        reply = real_client_app(msg, ctx)
        if msg.metadata.message_type == "train":
            seen[(int(msg.metadata.group_id), int(ctx.node_config["partition-id"]))] = reply.content["metrics"]["steps"]
        return reply

    set_task_identity()
    rows = run_server(InProcessGrid(app, 6), exp, tmp_path)
    assert seen == {(r, n): want[n] for r in (1, 2) for n in range(6)}
    assert [r["clients_replied"] for r in rows] == [6, 6]
    assert [r["sim_time_s"] for r in rows] == pytest.approx([max(back.values()), 2 * max(back.values())], rel=1e-12)
    outcomes = {c: t["outcome"] for c, t in details(tmp_path)[0]["sim"]["clients"].items()}
    assert {int(c) for c, o in outcomes.items() if o == "partial"} == {n for n in range(6)
                                                                      if want[n] < by_hand(exp, n)[2]}


@pytest.mark.parametrize("overrides, words", [
    (["device_profile=trace", "device_profile.path=/no/such/devices.csv"],
     ["device_profile.path=/no/such/devices.csv does not exist"]),
    (["device_profile=lognormal", "device_profile.compute_median=-0.1"], ["device_profile.compute_median=-0.1"]),
    (["server.deadline_s=5"], ["server.deadline_s=5", "needs a device model"]),
    (["device_profile=uniform", "server.deadline_s=-1"], ["server.deadline_s=-1", "> 0"]),
    (["device_profile=uniform", "server.deadline_s=1", "server.deadline_mode=maybe"],
     ["server.deadline_mode='maybe'", "drop, partial"]),
    (["device_profile=tiers", "+device_profile.speed=2"], ["device_profile.speed=2", "not an option"]),
    (["device_profile=lognormal", "device_profile.slow_labels=[10]", "device_profile.slow_factor=3"],
     ["device_profile.slow_labels=[10]", "outside 0..9"]),
])
def test_bad_profiles_are_refused_before_training(overrides, words, tmp_path):
    with pytest.raises(ConfigError) as e:
        run(compose(*BASE, *overrides), tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "run" / "metrics.csv").exists()


LINES = TRACE.splitlines()


@pytest.mark.parametrize("text, words", [
    ("\n".join([LINES[0], "0,-0.5,1,1,0.01", *LINES[2:]]), ["device_profile.path=", "row 2",
                                                          "compute_s_per_step=-0.5"]),
    ("\n".join([LINES[0], *LINES[2:]]), ["device_profile.path=", "client 0 has no row"]),
    ("\n".join([LINES[0] + ",battery", *(line + ",1" for line in LINES[1:])]), ["unknown column 'battery'"]),
    (None, ["device_profile.path=", "devices.csv does not exist"]),
], ids=["negative speed", "missing client", "unknown column", "no such file"])
def test_cli_refuses_a_bad_trace_in_one_line_exit_2(text, words, tmp_path):
    path = tmp_path / "devices.csv"
    if text is not None:
        path.write_text(text + "\n")
    p = subprocess.run(fedagg_cmd() + [*BASE, "device_profile=trace", f"device_profile.path={path}",
                                       f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2 and "Traceback" not in out and len(out.splitlines()) == 1, out[-2000:]
    assert "config error: device_profile.path=" in out and all(w in out for w in words), out
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.slow
def test_ray_worker_count_does_not_change_the_clock(tmp_path):
    pytest.importorskip("ray")
    from fedagg.runtime import ray_grid

    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fedagg_ray", dir="/tmp")
    common = [*SMALL, "rounds=2", "runtime=ray", "device_profile=lognormal", "server.deadline_s=1.2",
              "server.deadline_mode=partial", "heterogeneity=stragglers", "heterogeneity.rate=0.3"]
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
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    drop = ("round_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]
    assert [d["sim"] for d in details(tmp_path / "one")] == [d["sim"] for d in details(tmp_path / "two")]
    assert any(c["outcome"] == "partial" for c in details(tmp_path / "one")[0]["sim"]["clients"].values())
    ma, mb = torch.load(tmp_path / "one" / "model.pt"), torch.load(tmp_path / "two" / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_resume_refuses_another_deadline(tmp_path):
    common = [*BASE, "device_profile=uniform", "checkpoint.every=1"]
    run(compose(*common, "server.deadline_s=1.0"), tmp_path / "old")
    with pytest.raises(ConfigError, match=r"server.deadline_s: 1.0 in the checkpoint, 2.0 now"):
        run(compose(*common, "rounds=4", "server.deadline_s=2.0", f"resume={tmp_path / 'old'}"), tmp_path / "new")
    with pytest.raises(ConfigError, match=r"would change the result: device_profile\."):
        run(compose(*BASE, "device_profile=tiers", "checkpoint.every=1", "rounds=4", "server.deadline_s=1.0",
                    f"resume={tmp_path / 'old'}"), tmp_path / "new")


@pytest.mark.slow
def test_the_clock_costs_only_the_asked_clients(tmp_path, monkeypatch):
    """10^5 registered clients, 20 asked per round: the devices, steps and seconds of the asked ones only."""
    from fedagg.config import load
    from fedagg.data.federated import get_federated_data
    from fedagg.experiment import data_spec
    from fedagg.runtime.inprocess import OffsetMap

    def no_walk(self):
        raise AssertionError(f"iterated over all {len(self)} entries of the node <-> client map")

    monkeypatch.setattr(OffsetMap, "__iter__", no_walk)
    n = 100_000
    cfg = compose("dataset=synthetic", f"dataset.num_users={n}", f"dataset.num_samples={10 * n}",
                  "dataset.test_users=50", "partition=natural", f"num_clients={n}", "model=mlp",
                  "participation=uniform", f"participation.fraction={20 / n}", "rounds=2", "runtime=inprocess",
                  "train.epochs=1", "device_profile=lognormal", "server.deadline_s=0.5")
    rows = run(cfg, tmp_path)
    assert [r["clients_asked"] for r in rows] == [20, 20]
    assert all(len(d["sim"]["clients"]) == 20 for d in details(tmp_path))
    assert 0 < rows[0]["sim_time_s"] < rows[1]["sim_time_s"] <= 1.0
    assert len(get_federated_data(data_spec(load(cfg)))._clients) <= 40  # only the asked clients' shards
