"""Reliability: validated updates, survived failures, exact resume."""
from __future__ import annotations

import csv
import logging
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fedagg_testing import ROOT, SMALL, compose, fedagg_cmd
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedagg.errors import ConfigError
from fedagg.experiment import build, run
from fedagg.flower.client_app import app as real_client_app
from fedagg.runtime.inprocess import InProcessGrid, set_task_identity
from fedagg.server import run_server

BAD = 1  # the client whose replies get corrupted


def corrupt(kind: str):
    """A ClientApp that behaves like the real one except that client BAD
    sends a defective reply of the given kind."""

    def app(msg: Message, ctx: Context) -> Message:
        reply = real_client_app(msg, ctx)
        if int(ctx.node_config["partition-id"]) != BAD or msg.metadata.message_type != "train":
            return reply
        arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        metrics = dict(reply.content["metrics"])
        first = next(iter(arrays))
        if kind == "nan":
            arrays[first] = arrays[first].copy()
            arrays[first].flat[0] = np.nan
        elif kind == "inf":
            arrays[first] = np.full_like(arrays[first], np.inf)
        elif kind == "shape":
            arrays[first] = arrays[first][..., :-1].copy()
        elif kind == "dtype":
            arrays[first] = arrays[first].astype(np.float64)
        elif kind == "missing":
            arrays.pop(first)
        elif kind == "norm":
            arrays[first] = arrays[first] + 1e4
        elif kind == "neg_hist":
            metrics["label-hist"] = [-1] + list(metrics["label-hist"][1:])
        elif kind == "hist_len":
            metrics["label-hist"] = list(metrics["label-hist"]) + [3]
        elif kind == "count":
            metrics["num-examples"] = 0
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    return app


REASONS = {
    "nan": "NaN or Inf", "inf": "NaN or Inf", "shape": "shape", "dtype": "dtype",
    "missing": "parameter names differ", "norm": "exceeds validation.max_update_norm",
    "neg_hist": "negative", "hist_len": "label_hist has shape", "count": "num-examples",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_bad_update_rejected_round_goes_on(kind, tmp_path, caplog):
    exp = build(compose(*SMALL, "runtime=inprocess", "validation.max_update_norm=100"))
    set_task_identity()
    grid = InProcessGrid(corrupt(kind), exp.cfg.num_clients)
    with caplog.at_level(logging.WARNING, logger="fedagg"):
        rows = run_server(grid, exp, tmp_path)
    assert len(rows) == exp.cfg.rounds
    assert all(r["clients_rejected"] == 1 and r["clients_replied"] == 5 for r in rows)
    msgs = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert msgs and all(f"client {BAD}" in m for m in msgs)
    assert REASONS[kind] in msgs[0], msgs[0]
    sd = torch.load(tmp_path / "model.pt")
    assert all(torch.isfinite(v).all() for v in sd.values())
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] - 0.05


def test_crashing_clients_survived_and_accuracy_rises(tmp_path):
    rows = run(compose(*SMALL, "num_clients=10", "rounds=10", "runtime=inprocess",
                       "heterogeneity=crashes", "heterogeneity.rate=0.2"), tmp_path)
    failed = sum(r["clients_failed"] for r in rows)
    assert 5 <= failed <= 40, failed  # about 20% of 100 client-rounds
    assert all(r["clients_replied"] + r["clients_failed"] == r["clients_asked"] for r in rows)
    details = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert "injected crash" in "".join(details)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.1


def test_round_with_no_reply_keeps_previous_model(tmp_path, caplog):
    exp = build(compose(*SMALL, "rounds=2", "runtime=inprocess"))
    set_task_identity()

    def dead(msg, ctx):
        if msg.metadata.message_type == "train":
            raise RuntimeError("node is down")
        return real_client_app(msg, ctx)

    grid = InProcessGrid(dead, exp.cfg.num_clients)
    init = exp.init_params(0)
    with caplog.at_level(logging.WARNING, logger="fedagg"):
        rows = run_server(grid, exp, tmp_path)
    assert all(r["clients_replied"] == 0 and r["clients_failed"] == 6 for r in rows)
    assert any("no valid update arrived" in r.getMessage() for r in caplog.records)
    sd = torch.load(tmp_path / "model.pt")
    for k, v in init.items():
        assert np.array_equal(sd[k].numpy(), v)


class DropRepliesGrid(InProcessGrid):
    """Replies of some nodes arrive after the round timeout (absent, as with
    Flower's grids)."""

    def send_and_receive(self, messages, *, timeout=None):
        msgs = list(messages)
        replies = list(super().send_and_receive(msgs, timeout=timeout))
        if msgs and msgs[0].metadata.message_type != "train":
            return replies
        slow = {self.node_ids[0], self.node_ids[2]}
        return [r for r in replies if r.metadata.src_node_id not in slow]


def test_timed_out_clients_count_as_failed(tmp_path):
    exp = build(compose(*SMALL, "runtime=inprocess"))
    set_task_identity()
    rows = run_server(DropRepliesGrid(real_client_app, 6), exp, tmp_path)
    assert all(r["clients_failed"] == 2 and r["clients_replied"] == 4 for r in rows)
    assert "no reply before the round timeout" in (tmp_path / "rounds.jsonl").read_text()


# ----------------------------------------------------------------- resume
def _final(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt")


RESUME_CASES = {
    "fedau": ["aggregator=fedau", "participation=bernoulli", "participation.p_min=0.3"],
    "gossip": ["aggregator=gossip"],
    # client state: every client's control variate in the checkpoint, half of them spilled to the file
    "scaffold": ["aggregator=scaffold", "runtime.state_memory_mb=0.1"],
    # FedNova's server momentum is state; heterogeneous epochs make its normaliser matter; disco on top
    "fednova": ["aggregator=fednova", "aggregator.server_momentum=0.5", "aggregator.disco=true",
                "heterogeneity=epochs", "heterogeneity.max=3"],
    "clock": ["device_profile=lognormal", "server.deadline_s=1.2", "server.deadline_mode=partial",
              "heterogeneity=stragglers"],
    # the asynchronous modes: the checkpoint holds the schedule, the jobs in flight and their trained updates
    "fedasync": ["device_profile=lognormal", "server.mode=fedasync", "server.concurrency=3"],
    "fedbuff": ["device_profile=lognormal", "server.mode=fedbuff", "server.concurrency=4", "server.buffer_size=2"],
    "fedfix": ["device_profile=lognormal", "server.mode=fedfix", "server.concurrency=4", "server.window_s=0.7"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_sigkill_and_resume_equals_uninterrupted(name, tmp_path):
    common = [*SMALL, "rounds=8", "runtime=inprocess", "checkpoint.every=1", *RESUME_CASES[name]]
    full = tmp_path / "full"
    run(compose(*common), full)

    killed = tmp_path / "killed"
    p = subprocess.Popen(fedagg_cmd() + common + [f"hydra.run.dir={killed}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            ck = killed / "checkpoint.pkl"
            if ck.exists():
                try:
                    if pickle.loads(ck.read_bytes())["round"] >= 4:
                        break
                except Exception:  # being replaced right now
                    pass
            if p.poll() is not None:
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = pickle.loads((killed / "checkpoint.pkl").read_bytes())["round"]
    assert 4 <= stopped_at < 8
    assert not (killed / "model.pt").exists()

    resumed = tmp_path / "resumed"
    rows = run(compose(*common, f"resume={killed}"), resumed)
    assert [r["round"] for r in rows] == list(range(1, 9))
    a, b = _final(full), _final(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with open(full / "metrics.csv") as f1, open(resumed / "metrics.csv") as f2:
        acc1 = [(r["test_accuracy"], r.get("sim_time_s")) for r in csv.DictReader(f1)]
        acc2 = [(r["test_accuracy"], r.get("sim_time_s")) for r in csv.DictReader(f2)]
    assert acc1 == acc2


def test_resume_without_checkpoint_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint.pkl"):
        run(compose(*SMALL, "runtime=inprocess", f"resume={tmp_path / 'old'}"), tmp_path / "new")
    assert not (tmp_path / "new" / "metrics.csv").exists()


def test_resume_with_changed_key_is_refused_and_overwrites_nothing(tmp_path):
    old = tmp_path / "old"
    run(compose(*SMALL, "rounds=2", "runtime=inprocess", "checkpoint.every=1"), old)
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
    with pytest.raises(ConfigError) as e:
        run(compose(*SMALL, "rounds=4", "runtime=inprocess", "train.lr=0.2", f"resume={old}"), old)
    assert "train.lr" in str(e.value)
    after = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
    assert before == after


def test_node_with_out_of_range_partition_id_is_refused_by_name():
    """A SuperNode started with --node-config 'partition-id=9' in a 6-client run:
    its ClientApp answers with an error naming the key and the valid range."""
    from flwr.app import MessageType
    from flwr.app import RecordDict as RD

    from fedagg.runtime.calls import call_client

    exp = build(compose(*SMALL, "runtime=inprocess"))
    set_task_identity()
    msg = Message(RD({"config": exp.instruction.encode()}), dst_node_id=7, message_type=MessageType.QUERY)
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 9, "num-partitions": 6}, state=RD(), run_config={})
    reply = call_client(real_client_app, msg, ctx)
    assert reply.has_error()
    assert "partition-id=9 is out of range 0..5" in reply.error.reason
