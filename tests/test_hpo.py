"""The learning-rate search preset (+experiment=hpo_lr, Hydra's Optuna
sweeper), shrunk to 2 trials of 1 round per aggregator, ends in a
fedagg-report table with one row per trial."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from fedagg_testing import ROOT, fedagg_cmd


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lr_search_per_aggregator_ends_in_a_report_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    lrs: dict[str, list[float]] = {}
    for agg in ("fedavg", "fedau"):
        sweep = tmp_path / "hpo" / agg
        r = subprocess.run([*fedagg_cmd(), "-m", "+experiment=hpo_lr", f"aggregator={agg}", "hydra.sweeper.n_trials=2",
                            "rounds=1", "num_clients=6", f"hydra.sweep.dir={sweep}"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
        assert set(best["best_params"]) == {"train.lr"} and 0 <= best["best_value"] <= 1
        runs = [d for d in sweep.iterdir() if (d / "status.json").exists()]
        assert len(runs) == 2
        lrs[agg] = sorted(yaml.safe_load((d / "config.yaml").read_text())["train"]["lr"] for d in runs)
        assert all(0.01 <= lr <= 3.0 for lr in lrs[agg]) and lrs[agg][0] != lrs[agg][1]  # searched, in range
        assert best["best_params"]["train.lr"] in lrs[agg]
    r = subprocess.run([sys.executable, "-m", "fedagg.report", str(tmp_path / "hpo"), "--last-k", "1", "--no-plots"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    header, rows = table[0], table[1:]  # the |---| line does not start with '| '
    assert "aggregator.name" in header and "train.lr" in header
    assert len(rows) == 4  # one row per (aggregator, lr) trial
    assert sum("fedau" in row for row in rows) == 2
    assert lrs["fedau"] == lrs["fedavg"]  # same seed, same candidates: the aggregators are compared at equal lrs
