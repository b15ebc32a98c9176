"""examples/custom_aggregator: a user's own rule and model, selected with
``_target_`` keys, run against an unmodified fedagg; bad targets are one-line
config errors."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml
from fedagg_testing import ROOT, fedagg_cmd

EXAMPLE = ROOT / "examples" / "custom_aggregator"


def test_run_sh_runs_three_rounds_with_the_median_rule(tmp_path):
    env = {**os.environ, "FEDAGG": f"{sys.executable} -m fedagg.cli", "OUT": str(tmp_path / "run"),
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run(["bash", str(EXAMPLE / "run.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert all(int(r["median_of"]) == 6 for r in rows)  # the median rule's own metric: it aggregated 6 updates
    assert float(rows[-1]["test_accuracy"]) > 0.3  # it learns (digits, 10 classes: chance is 0.1)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["aggregator"]["_target_"] == "my_rules.rules.CoordinateMedian"
    assert cfg["model"] == {"name": "cnn1d", "_target_": "my_rules.nets.TinyNet", "hidden": 32}


@pytest.mark.parametrize("override, words", [
    ("aggregator._target_=no_such_pkg.Rule", ["aggregator._target_", "no_such_pkg.Rule", "cannot be imported"]),
    ("aggregator._target_=my_rules.nets.TinyNet", ["not a subclass of fedagg.aggregators.Aggregator"]),
    ("+aggregator.q=0.5", ["aggregator.q=0.5", "not an option"]),
    ("model._target_=my_rules.nope.Net", ["model._target_", "cannot be imported"]),
])
def test_bad_target_is_a_one_line_config_error(override, words, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{EXAMPLE}{os.pathsep}{ROOT}"}
    extra = [] if override.startswith("aggregator._target_") else ["aggregator._target_=my_rules.rules.CoordinateMedian"]
    p = subprocess.run(fedagg_cmd() + [*extra, override, "dataset=digits", "runtime=inprocess",
                                       f"hydra.run.dir={tmp_path}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2, out[-2000:]
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    for w in words:
        assert w in out, (w, out)
