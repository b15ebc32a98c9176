"""Per-client evaluation: the fairness distribution and ``fedagg-eval``."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from fedagg_testing import ROOT, SMALL, compose

from fedagg.evaluation import distribution, main
from fedagg.experiment import run


def test_distribution_worked_numbers():
    accs = [0.1 * i for i in range(1, 11)]  # 0.1 .. 1.0, 10 clients: 10 % is one client
    d = distribution(accs)
    assert d["client_acc_mean"] == pytest.approx(0.55)
    assert d["client_acc_std"] == pytest.approx(math.sqrt(sum((a - 0.55) ** 2 for a in accs) / 10))
    assert d["client_acc_worst10"] == pytest.approx(0.1) and d["client_acc_best10"] == pytest.approx(1.0)
    d = distribution([0.5, 0.9, 0.2, 0.4] * 3 + [0.3])  # 13 clients: ceil(1.3) = 2 each side
    assert d["client_acc_worst10"] == pytest.approx(0.2) and d["client_acc_best10"] == pytest.approx(0.9)
    assert distribution([]) == {}


def test_fedagg_eval_scores_a_saved_model(tmp_path, capsys):
    run(compose(*SMALL, "rounds=2", "runtime=inprocess", "val_fraction=0.3"), tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert main([str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the same model on the same test set: exactly the run's last test accuracy
    assert res["test_accuracy"] == pytest.approx(float(last["test_accuracy"]), abs=1e-12)
    assert res["client_split"] == "val" and len(res["clients"]) == 6
    assert all(r["examples"] > 0 and 0 <= r["accuracy"] <= 1 for r in res["clients"])
    accs = sorted(r["accuracy"] for r in res["clients"])
    assert res["client_acc_worst10"] == pytest.approx(accs[0]) and res["client_acc_best10"] == pytest.approx(accs[-1])
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-m", "fedagg.evaluation", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test accuracy" in r.stdout and "worst 10%" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fedagg.evaluation", str(tmp_path / "nope")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "config.yaml" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("runtime", ["inprocess", "ray"])
def test_eval_every_scores_every_client_on_its_held_out_split(tmp_path, runtime, monkeypatch):
    """eval.every=2 over 4 rounds: rounds 0 (the initial model), 2 and 4 carry
    every client's accuracy (rounds.jsonl) and its spread (metrics.csv); the
    last round's scores are exactly what fedagg-eval computes from model.pt."""
    monkeypatch.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR", "/tmp"))
    run(compose(*SMALL, "rounds=4", f"runtime={runtime}", "val_fraction=0.3", "eval.every=2"), tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = {int(r["round"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for r in (0, 2, 4):
        assert 0 <= float(rows[r]["client_acc_worst10"]) <= float(rows[r]["client_acc_mean"]) <= float(rows[r]["client_acc_best10"]) <= 1
    assert rows[1]["client_acc_mean"] == "" and rows[3]["client_acc_mean"] == ""
    assert float(rows[4]["client_acc_mean"]) > float(rows[0]["client_acc_mean"]) + 0.3  # the federation learned
    details = {d["round"]: d for d in map(json.loads, (tmp_path / "rounds.jsonl").read_text().splitlines())}
    assert len(details[0]["client_accuracy"]) == 6 and None not in details[4]["client_accuracy"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(tmp_path), "--json"]) == 0
    res = json.loads(buf.getvalue())
    assert [c["accuracy"] for c in res["clients"]] == pytest.approx(details[4]["client_accuracy"], abs=1e-12)


def test_the_server_evaluation_scores_a_record_and_its_parameters_alike():
    """Flower's evaluate_fn(round, arrays) and the asynchronous loops' params(round, params) are one evaluation:
    the same numbers for the same model; round 0 (the initial model) is not scored; the record's values equal a
    by-hand evaluation of a model holding them."""
    import numpy as np

    from fedagg.config import load
    from fedagg.experiment import build
    from fedagg.flower.codec import params_to_record
    from fedagg.server import ServerEvaluation
    from fedagg.task.train import evaluate, set_params

    exp = build(load(compose(*SMALL)))
    params = exp.init_params(3)
    ev = ServerEvaluation(exp)
    by_record, by_params = ev(2, params_to_record(params)), ev.params(2, params)
    assert by_record is not None and dict(by_record) == dict(by_params)
    assert ev(0, params_to_record(params)) is None
    model = exp.model()
    set_params(model, params)
    loss, acc = evaluate(model, exp.x_test, exp.y_test)
    assert by_params["loss"] == loss and by_params["accuracy"] == acc and 0.0 <= acc <= 1.0
    assert np.isfinite(loss)
