"""The walking skeleton: one experiment end to end, bad config caught early,
and the same numbers on two runtimes."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from fedagg_testing import ROOT, SMALL, compose, fedagg_cmd

from fedagg.errors import ConfigError
from fedagg.experiment import build, run


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_inprocess_run_writes_results_and_learns(tmp_path):
    rows = run(compose(*SMALL, "rounds=6", "runtime=inprocess"), tmp_path)
    assert [r["round"] for r in rows] == list(range(1, 7))
    m = read_metrics(tmp_path)
    for col in ("round", "clients_asked", "clients_replied", "clients_failed", "train_loss",
                "test_accuracy", "test_loss", "round_seconds"):
        assert col in m[0]
    acc = [float(r["test_accuracy"]) for r in m]
    assert acc[-1] > acc[0] + 0.1, acc  # accuracy actually rises
    assert all(int(r["clients_replied"]) == 6 for r in m)
    sd = torch.load(tmp_path / "model.pt")
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("aggregator.name=nosuch", "aggregator.name"),
        ("partition.alpha=0", "partition.alpha"),
        ("partition.alpha=-1", "partition.alpha"),
        ("rounds=0", "rounds"),
        ("num_clients=100000", "num_clients"),
        ("dataset.name=nosuch", "dataset.name"),
        ("runtime.num_gpus_per_client=0.5", "runtime.num_gpus_per_client"),
        ("device=cuda", "device"),
        ("runtime.num_cpus_per_client=999", "runtime.num_cpus_per_client"),
        ("model.name=nosuch", "model.name"),
        ("runtime.name=nosuch", "runtime.name"),
        ("participation.name=nosuch", "participation.name"),
        ("heterogeneity.name=nosuch", "heterogeneity.name"),
        ("+aggregator.nosuch_option=1", "aggregator.nosuch_option"),
        ("train.lr=0", "train.lr"),
    ],
)
def test_bad_config_fails_before_training(override, key, monkeypatch):
    if torch.cuda.is_available() and ("gpu" in override or "cuda" in override):
        pytest.skip("this machine has CUDA")
    import fedagg.task.train as tr

    def boom(*a, **k):  # training must never start
        raise AssertionError("training started")

    monkeypatch.setattr(tr, "train_local", boom)
    with pytest.raises((ConfigError, ValueError)) as e:
        build(compose(*SMALL, override))
    assert key in str(e.value)


def test_unknown_aggregator_lists_choices():
    with pytest.raises(ConfigError) as e:
        build(compose(*SMALL, "aggregator.name=fedsomething"))
    assert "fedavg" in str(e.value)


@pytest.mark.slow
def test_flower_ray_runtime_matches_inprocess(tmp_path):
    """The same ServerApp/ClientApp on Flower's simulation engine (real Ray)
    and on the in-process grid end with the same parameters."""
    a = run(compose(*SMALL, "runtime=inprocess"), tmp_path / "a")
    b = run(compose(*SMALL, "runtime=flower", "runtime.num_cpus=2"), tmp_path / "b")
    pa, pb = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    diff = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
    assert diff <= 1e-5, diff
    assert [r["clients_replied"] for r in a] == [r["clients_replied"] for r in b]


@pytest.mark.slow
def test_cli_multirun_makes_one_folder_per_job(tmp_path):
    cmd = fedagg_cmd() + ["-m", "seed=0,1", *SMALL, "rounds=2", "runtime=inprocess",
                          f"hydra.sweep.dir={tmp_path}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d for d in tmp_path.iterdir() if (d / "metrics.csv").exists())
    assert len(runs) == 2
    for d in runs:
        assert len(read_metrics(d)) == 2
    seeds = {(d / "config.yaml").read_text().split("seed: ")[1].split()[0] for d in runs}
    assert seeds == {"0", "1"}


@pytest.mark.slow
def test_cli_bad_config_exits_with_named_key(tmp_path):
    cmd = fedagg_cmd() + ["partition.alpha=0", "runtime=inprocess", f"hydra.run.dir={tmp_path}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "partition.alpha" in (p.stdout + p.stderr)
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "metrics.csv").exists()
