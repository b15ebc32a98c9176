"""fedagg-report on synthetic sweep folders with known numbers."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from fedagg.report.summary import main, report

from fedagg_testing import ROOT


def fake_run(folder, agg, seed, accs, status="completed", extra_cols=None, rounds_jsonl=None, alpha=0.3):
    folder.mkdir(parents=True)
    cfg = {"aggregator": {"name": agg, "server_lr": 1.0}, "partition": {"name": "dirichlet", "alpha": alpha},
           "num_clients": 4, "rounds": 4, "seed": seed}
    if agg == "fedau":
        cfg["aggregator"]["K"] = None  # a key only one aggregator has is not a swept key
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    if status is not None:
        st = {"status": status}
        if status == "failed":
            st["error"] = "RuntimeError: boom"
        (folder / "status.json").write_text(json.dumps(st))
    if accs:
        df = pd.DataFrame({"round": range(1, len(accs) + 1), "clients_asked": 4, "clients_replied": 4,
                           "train_loss": 1.0, "test_accuracy": accs, "test_loss": 1.0})
        for c in extra_cols or []:
            df[c] = 0.5
        df.to_csv(folder / "metrics.csv", index=False)
    if rounds_jsonl:
        (folder / "rounds.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rounds_jsonl))


ACCS = {  # (aggregator, seed) -> accuracy per round
    ("fedavg", 0): [0.1, 0.2, 0.3, 0.4],
    ("fedavg", 1): [0.1, 0.3, 0.5, 0.6],
    ("fedavg", 2): [0.2, 0.2, 0.4, 0.8],
    ("fedau", 0): [0.3, 0.5, 0.7, 0.9],
    ("fedau", 1): [0.2, 0.4, 0.6, 0.7],
}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    rounds = [{"round": r, "asked": [0, 1, 2], "replied": [0, 1], "failed": {"2": "x"}, "rejected": {},
               "weight_clients": [0, 1], "weights": [0.7, 0.3]} for r in range(1, 5)]
    for i, ((agg, seed), accs) in enumerate(ACCS.items()):
        # any depth: fedau runs sit one level deeper
        sub = root / ("deep" if agg == "fedau" else "") / f"{i}_aggregator={agg},seed={seed}"
        fake_run(sub, agg, seed, accs, rounds_jsonl=rounds if agg == "fedau" else None,
                 extra_cols=["omega_sum_over_N"] if agg == "fedau" else None)
        (sub / ".hydra").mkdir()  # Hydra's own copy must not count as a run
        (sub / ".hydra" / "config.yaml").write_text("seed: 99\n")
    fake_run(root / "9_aggregator=fedau,seed=2", "fedau", 2, [0.1, 0.1], status="failed")
    return root


def test_report_means_and_sample_std(sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(sweep), "--last-k", "2", "--target", "0.6", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6
    assert "aggregator.name" in runs.columns and "seed" in runs.columns
    assert "aggregator.K" not in runs.columns and "partition.alpha" not in runs.columns
    fa = runs[runs["aggregator.name"] == "fedavg"].sort_values("seed")
    assert fa["final_accuracy"].tolist() == pytest.approx([0.35, 0.55, 0.6], abs=1e-12)
    assert fa["best_accuracy"].tolist() == pytest.approx([0.4, 0.6, 0.8], abs=1e-12)
    assert fa["rounds_to_target"].fillna(-1).tolist() == [-1, 4, 4]

    summ = pd.read_csv(out / "summary.csv").set_index("aggregator.name")
    assert summ.loc["fedavg", "n"] == 3 and summ.loc["fedavg", "failed"] == 0
    assert summ.loc["fedavg", "final_accuracy_mean"] == pytest.approx(statistics.mean([0.35, 0.55, 0.6]), abs=1e-12)
    assert summ.loc["fedavg", "final_accuracy_std"] == pytest.approx(statistics.stdev([0.35, 0.55, 0.6]), abs=1e-12)
    assert summ.loc["fedau", "n"] == 2 and summ.loc["fedau", "failed"] == 1
    assert summ.loc["fedau", "final_accuracy_mean"] == pytest.approx(0.725, abs=1e-12)
    assert summ.loc["fedau", "final_accuracy_std"] == pytest.approx(statistics.stdev([0.8, 0.65]), abs=1e-12)
    assert summ.loc["fedau", "reached_target"] == 2

    md = (out / "summary.md").read_text()
    assert "| fedavg | 3 | 0 | 0.5000 ± 0.1323 |" in md
    assert "| fedau | 2 | 1 | 0.7250 ± 0.1061 |" in md
    assert "RuntimeError: boom" in md  # the failed run is listed, not dropped
    assert "| fedavg | 3 | 0 |" in printed.out  # table printed to stdout too
    assert "different metric columns" in printed.err and "omega_sum_over_N" in printed.err
    for png in ("accuracy.png", "participation.png", "weights.png"):
        assert (out / png).stat().st_size > 1000, png


def test_report_writes_into_sweep_folder_by_default(sweep, capsys):
    assert main([str(sweep), "--no-plots"]) == 0
    assert (sweep / "runs.csv").exists() and (sweep / "summary.md").exists()
    runs = pd.read_csv(sweep / "runs.csv")
    assert runs["rounds_to_target"].isna().all()  # no --target: empty column


def test_failed_and_missing_status_are_failed(tmp_path, capsys):
    root = tmp_path / "s"
    fake_run(root / "a", "fedavg", 0, [0.5, 0.6])
    fake_run(root / "b", "fedavg", 1, [0.5], status="failed")
    fake_run(root / "c", "fedavg", 2, [0.5, 0.7], status=None)  # killed: no status.json
    fake_run(root / "d", "fedavg", 3, [], status="completed")  # claims completed, no metrics
    res = report(root, plots=False)
    runs = res["runs"].set_index("run")
    assert runs.loc["a", "status"] == "completed"
    assert (runs.loc[["b", "c", "d"], "status"] == "failed").all()
    assert "status.json" in runs.loc["c", "error"]
    s = res["summary"].iloc[0]
    assert s["n"] == 1 and s["failed"] == 3
    assert s["final_accuracy_mean"] == pytest.approx(0.55)
    assert "| all runs | 1 | 3 | 0.5500 |" in res["markdown"]


def test_only_failed_runs_still_reported(tmp_path, capsys):
    fake_run(tmp_path / "x", "fedavg", 0, [], status="failed")
    assert main([str(tmp_path), "--no-plots"]) == 0
    assert "| all runs | 0 | 1 | — |" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, make):
    p = tmp_path / "sweep"
    if make == "empty":
        (p / "sub").mkdir(parents=True)
    elif make == "file":
        p.write_text("x")
    assert main([str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedagg-report: ") and "\n" not in err
    assert ("no runs" in err) if make == "empty" else ("does not exist" in err or "not a folder" in err)


def test_module_entry_point_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fedagg.report", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "does not exist" in p.stderr
