"""FedNova and FedDisco-on-a-rule end to end: real runs (digits / MLP, in-process), the step counts
FedNova reads are the ones each client really trained (heterogeneous epochs, stragglers' partial work),
the vectorised cohort path gives the per-client path's model, bad combinations are refused in one line
before training, and ``strategy_for("fednova")`` runs in a ServerApp that is not fedagg's."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import foreign_flower_app
import pytest
import torch
from fedagg_testing import SMALL, compose, fedagg_cmd

from fedagg.config import load
from fedagg.errors import ConfigError
from fedagg.experiment import build, run
from fedagg.outcomes import RunFailed
from fedagg.task.work import planned_steps


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _acc(out: Path) -> list[float]:
    import csv

    with open(out / "metrics.csv") as f:
        return [float(r["test_accuracy"]) for r in csv.DictReader(f)]


FEDNOVA = [*SMALL, "runtime=inprocess", "aggregator=fednova", "train.momentum=0.0", "train.lr=0.1"]


def test_fednova_learns_and_reads_each_clients_real_steps(tmp_path):
    over = [*FEDNOVA, "rounds=4", "heterogeneity=epochs", "heterogeneity.per=round", "heterogeneity.max=3"]
    run(compose(*over), tmp_path)
    acc = _acc(tmp_path)
    assert acc[-1] > acc[0] and acc[-1] > 0.3, acc
    exp = build(compose(*over))
    tr = exp.cfg.train
    varied = set()
    for r in _rounds(tmp_path):
        want = [planned_steps(exp.fd.train_size(c), epochs=int(exp.heterogeneity.plan(r["round"], c)["epochs"]),
                              steps=0, batch_size=tr.batch_size, work_fraction=1.0) for c in r["weight_clients"]]
        assert r["steps"] == want and r["normalizer"] == [float(s) for s in want]  # ρ = 0: a_i = τ_i
        varied.add(tuple(want))
    assert len(varied) > 1  # per-round epoch draws changed the steps


def test_stragglers_partial_work_is_what_fednova_sees(tmp_path):
    over = [*FEDNOVA, "rounds=2", "heterogeneity=stragglers", "heterogeneity.rate=0.5", "train.momentum=0.9"]
    run(compose(*over), tmp_path)
    exp = build(compose(*over))
    tr = exp.cfg.train
    partial = 0
    for r in _rounds(tmp_path):
        for c, s in zip(r["weight_clients"], r["steps"]):
            frac = float(exp.heterogeneity.plan(r["round"], c).get("work_fraction", 1.0))
            partial += frac < 1.0
            assert s == planned_steps(exp.fd.train_size(c), epochs=tr.epochs, steps=0, batch_size=tr.batch_size,
                                      work_fraction=frac)
    assert partial > 0


@pytest.mark.parametrize("overrides", [
    ("aggregator=fednova", "heterogeneity=epochs", "heterogeneity.max=3"),
    ("aggregator=fednova", "aggregator.disco=true", "heterogeneity=stragglers", "heterogeneity.rate=0.5"),
])
def test_vectorised_equals_per_client(tmp_path, overrides):
    common = [*SMALL, "runtime=inprocess", "rounds=2", *overrides]
    run(compose(*common, "runtime.vectorize=false"), tmp_path / "plain")
    run(compose(*common, "runtime.vectorize=true", "runtime.cohort_chunk=4"), tmp_path / "vec")
    a, b = torch.load(tmp_path / "plain" / "model.pt"), torch.load(tmp_path / "vec" / "model.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert [r["steps"] for r in _rounds(tmp_path / "plain")] == [r["steps"] for r in _rounds(tmp_path / "vec")]


def test_fedavg_with_disco_is_feddisco_end_to_end(tmp_path):
    common = [*SMALL, "runtime=inprocess", "rounds=2", "partition.alpha=0.3"]
    run(compose(*common, "aggregator=feddisco"), tmp_path / "fd")
    run(compose(*common, "aggregator=fedavg", "aggregator.disco=true"), tmp_path / "avg")
    a, b = torch.load(tmp_path / "fd" / "model.pt"), torch.load(tmp_path / "avg" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _rounds(tmp_path / "fd"), _rounds(tmp_path / "avg")
    assert [r["weights"] for r in ra] == [r["weights"] for r in rb]
    assert any(abs(w - 1 / 6) > 1e-3 for w in ra[0]["weights"])  # the disco weights are not the size weights


@pytest.mark.parametrize("overrides, said", [
    (("aggregator=fedau", "+aggregator.disco=true"), "aggregator 'fedau' cannot take FedDisco's weights"),
    (("aggregator=fednova", "train.optimizer=adam"), "train.optimizer='adam' is not allowed; aggregator=fednova"),
    (("aggregator=fednova", "train.proximal_mu=0.1"), "train.proximal_mu=0.1 is not allowed; aggregator=fednova"),
    (("aggregator=fednova", "aggregator.rho=1.5"), "aggregator.rho=1.5 is not allowed"),
])
def test_bad_combinations_are_config_errors(overrides, said):
    with pytest.raises(ConfigError, match=said.replace("(", r"\(")):
        load(compose(*SMALL, *overrides))


def test_cli_refuses_disco_on_a_rule_that_cannot_take_it_in_one_line(tmp_path):
    p = subprocess.run([*fedagg_cmd(), "aggregator=ida", "aggregator.disco=true", f"hydra.run.dir={tmp_path}/r"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "aggregator 'ida' cannot take FedDisco's weights" in lines[0], p.stderr
    assert "fednova" in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------- a ServerApp that is not fedagg's
def _foreign(exp, **cfg_extra):
    from test_strategy_contract import ForeignGrid, _train_config

    from fedagg.runtime.inprocess import set_task_identity

    cfg = _train_config(exp)
    for k, v in cfg_extra.items():
        cfg[k] = v
    set_task_identity()
    return ForeignGrid(foreign_flower_app.app, 4), cfg


def test_strategy_for_fednova_in_a_foreign_serverapp():
    from fedagg.flower import strategy_for
    from fedagg.flower.codec import params_to_record

    exp = build(compose("dataset=digits", "model=mlp", "num_clients=4", "participation=full", "runtime=inprocess",
                        "train.epochs=1", "train.lr=0.1", "train.momentum=0.9", "aggregator=fednova"))
    with pytest.raises(ValueError, match="rule 'fednova' needs rho="):
        strategy_for("fednova")
    grid, cfg = _foreign(exp)
    strategy = strategy_for("fednova", rho=0.9)
    res = strategy.start(grid=grid, initial_arrays=params_to_record(exp.init_params(0)), num_rounds=1,
                         train_config=cfg, evaluate_config=cfg)
    m = res.train_metrics_clientapp[1]
    assert m["num-replied"] == 4 and len(m["steps"]) == 4 and m["tau_eff"] > max(m["steps"])  # ρ = 0.9: a_i > τ_i
    # a ClientApp that does not say its steps: every reply is refused, with the one sentence
    grid, cfg = _foreign(exp, **{"send-steps": False})
    strategy = strategy_for("fednova", rho=0.9)
    with pytest.raises(RunFailed):
        strategy.start(grid=grid, initial_arrays=params_to_record(exp.init_params(0)), num_rounds=1,
                       train_config=cfg, evaluate_config=cfg)
    rejected = strategy.last_record.rejected
    assert len(rejected) == 4 and all("fednova needs each reply's 'steps'" in w for w in rejected.values())


def test_fedprox_preset_is_fedavg_with_the_clients_proximal_term(tmp_path):
    common = [*SMALL, "runtime=inprocess", "rounds=1"]
    run(compose(*common, "aggregator=fedprox"), tmp_path / "prox")
    run(compose(*common, "aggregator=fedavg", "train.proximal_mu=0.01"), tmp_path / "train_mu")
    run(compose(*common, "aggregator=fedavg"), tmp_path / "avg")
    a, b, c = (torch.load(tmp_path / d / "model.pt") for d in ("prox", "train_mu", "avg"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the preset's mu reaches the clients as train.proximal_mu does
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_fednova_on_ray_is_bitwise_independent_of_the_worker_count(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import tempfile

    from fedagg.runtime import ray_grid

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="fedagg_ray", dir="/tmp"))  # short: AF_UNIX paths
    common = [*SMALL, "rounds=2", "runtime=ray", "runtime.cohort_chunk=2", "aggregator=fednova",
              "aggregator.disco=true", "heterogeneity=epochs", "heterogeneity.max=3"]
    ray_grid.shutdown()
    try:
        run(compose(*common, "runtime.num_workers=1"), tmp_path / "w1")
        run(compose(*common, "runtime.num_workers=2"), tmp_path / "w2")
    finally:
        ray_grid.shutdown()
    a, b = torch.load(tmp_path / "w1" / "model.pt"), torch.load(tmp_path / "w2" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rounds(tmp_path / "w1")[-1]["steps"] == _rounds(tmp_path / "w2")[-1]["steps"]
