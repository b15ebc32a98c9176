"""The ``dp`` section: Flower's server-side DP wrappers around every built-in run."""
from __future__ import annotations

import csv

import pytest
import torch
from fedagg_testing import compose

from fedagg.config import load
from fedagg.errors import ConfigError
from fedagg.experiment import run

COMMON = ["dataset=digits", "model=mlp", "num_clients=4", "rounds=2", "participation=full", "runtime=inprocess",
          "train.epochs=1", "train.lr=0.1", "partition.alpha=0.5"]


def _run(tmp_path, name: str, *overrides: str):  # noqa: ANN202
    d = tmp_path / name
    d.mkdir()
    run(compose(*COMMON, *overrides), d)
    with open(d / "metrics.csv") as f:
        return list(csv.DictReader(f)), torch.load(d / "model.pt")


@pytest.mark.parametrize("aggregator", ["fedavg", "fedau", "feddisco"])
def test_server_fixed_dp_reports_its_settings_and_repeats_exactly(tmp_path, aggregator):
    dp = ["dp.mode=server_fixed", "dp.noise_multiplier=0.5", "dp.clipping_norm=0.2", f"aggregator={aggregator}"]
    rows, model = _run(tmp_path, "a", *dp)
    assert [float(r["dp_noise_multiplier"]) for r in rows] == [0.5, 0.5]
    assert [float(r["dp_clipping_norm"]) for r in rows] == [0.2, 0.2]
    assert all(int(r["clients_replied"]) == 4 for r in rows)
    _, again = _run(tmp_path, "b", *dp)  # the noise comes from the named stream ("dp-noise", round)
    assert all(torch.equal(model[k], again[k]) for k in model)
    _, plain = _run(tmp_path, "c", f"aggregator={aggregator}")
    assert any(not torch.equal(model[k], plain[k]) for k in model)  # ... and it is there


def test_server_adaptive_dp_reports_the_clipping_norm_of_each_round(tmp_path):
    rows, _ = _run(tmp_path, "a", "dp.mode=server_adaptive", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05")
    norms = [float(r["dp_clipping_norm"]) for r in rows]
    assert norms[0] != 0.05 and norms[0] != norms[1]  # every update is above 0.05: the norm grows
    assert float(rows[0]["dp_noise_multiplier"]) > 0


def test_resumed_adaptive_dp_run_equals_the_uninterrupted_one(tmp_path):
    """The adaptive clipping norm survives a resume: 2 rounds + 2 resumed = 4 rounds, bit for bit."""
    dp = ["dp.mode=server_adaptive", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05", "checkpoint.every=1"]
    full_rows, full = _run(tmp_path, "full", *dp, "rounds=4")
    _run(tmp_path, "part", *dp)  # rounds=2
    d = tmp_path / "resumed"
    run(compose(*COMMON, *dp, "rounds=4", f"resume={tmp_path / 'part'}"), d)
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    resumed = torch.load(d / "model.pt")
    assert [r["dp_clipping_norm"] for r in rows] == [r["dp_clipping_norm"] for r in full_rows]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize(("override", "key"), [("dp.mode=local", "dp.mode"), ("dp.clipping_norm=0", "dp.clipping_norm"),
                                               ("dp.noise_multiplier=-1", "dp.noise_multiplier")])
def test_bad_dp_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load(compose(*COMMON, override))
