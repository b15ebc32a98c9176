"""+experiment=compare_drift (the drift baselines ± FedDisco) composes into the grid it promises, every job
passes the checks a sweep runs before it starts, and fedagg-report can pair it against one FedAvg group
(``--paired-against fedavg@aggregator.disco=false,...``). The sweep itself is evidence work, not run here."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from fedagg_testing import compose
from test_report import fake_run

from fedagg.config import CONF_DIR, load
from fedagg.preflight import check
from fedagg.report.summary import main

PRESET = Path(CONF_DIR) / "experiment" / "compare_drift.yaml"


def test_compare_drift_grid_and_setting():
    params = yaml.safe_load(PRESET.read_text())["hydra"]["sweeper"]["params"]
    assert params == {"partition": "labeldir01,label2", "aggregator": "fedavg,fedprox,fednova,scaffold,feddyn,moon",
                      "aggregator.disco": "false,true", "seed": "0,1,2,3,4"}
    for part, agg, disco in (("labeldir01", "fedavg", "false"), ("label2", "fednova", "true"),
                             ("label2", "fedprox", "true"), ("labeldir01", "scaffold", "true"),
                             ("label2", "feddyn", "true"), ("labeldir01", "moon", "false")):
        cfg = load(compose("+experiment=compare_drift", f"partition={part}", f"aggregator={agg}",
                           f"aggregator.disco={disco}"))
        assert (cfg.dataset["name"], cfg.model["name"], cfg.num_clients, cfg.heterogeneity["name"]) == \
            ("mnist_5k", "cnn", 10, "epochs")
        assert cfg.aggregator["disco"] is (disco == "true") and cfg.train.momentum == 0.9
    labeldir = load(compose("+experiment=compare_drift"))
    assert labeldir.partition == {"name": "dirichlet", "alpha": 0.1, "min_size": 10}
    c2 = load(compose("+experiment=compare_drift", "partition=label2")).partition
    assert c2["name"] == "flwr_pathological" and c2["classes_per_client"] == 2
    fedprox = load(compose("+experiment=compare_drift", "aggregator=fedprox")).aggregator
    assert fedprox["name"] == "fedavg" and fedprox["proximal_mu"] == 0.01


def test_every_job_of_the_small_sweep_passes_the_preflight_checks():
    assert check(["-m", "+experiment=compare_drift_small"]) == []


# ------------------------------------------------------------- the report's reference group
def _sweep(root: Path) -> Path:
    """fedavg, fedprox (fedavg with proximal_mu 0.01) and fednova (no proximal_mu option), each ± disco, over 3
    seeds: disco adds 0.02, fedprox 0.005, fednova 0.01."""
    for seed, base in ((0, 0.5), (1, 0.6), (2, 0.7)):
        for label, agg, mu, gain in (("fedavg", "fedavg", 0.0, 0.0), ("fedprox", "fedavg", 0.01, 0.005),
                                     ("fednova", "fednova", None, 0.01)):
            for disco in (False, True):
                d = root / f"{label}_{disco}_{seed}"
                fake_run(d, agg, seed, [0.1, base + gain + (0.02 if disco else 0.0)])
                cfg = yaml.safe_load((d / "config.yaml").read_text())
                cfg["aggregator"]["disco"] = disco
                if mu is not None:
                    cfg["aggregator"]["proximal_mu"] = mu
                (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_report_pairs_against_one_group_of_a_rule(tmp_path, capsys):
    root = _sweep(tmp_path / "sweep")
    assert main([str(root), "--paired-against", "fedavg", "--no-plots"]) == 2  # two fedavg groups: ambiguous
    assert "several groups of fedavg" in capsys.readouterr().err
    assert main([str(root), "--paired-against", "fedavg@aggregator.disco=false", "--no-plots"]) == 2  # and fedprox
    capsys.readouterr()
    out = tmp_path / "rep"
    header = PRESET.read_text().split("--paired-against ", 1)[1].split()[0]  # the preset's own report line
    assert header == "fedavg@aggregator.disco=false,aggregator.proximal_mu=0"
    assert main([str(root), "--last-k", "1", "--paired-against", header, "--out", str(out), "--no-plots"]) == 0
    summ = pd.read_csv(out / "summary.csv")
    summ["mu"] = summ["aggregator.proximal_mu"].fillna(-1)
    summ = summ.set_index(["aggregator.name", "mu", "aggregator.disco"])
    for key, want in {("fedavg", 0.0, True): 0.02, ("fedavg", 0.01, False): 0.005, ("fedavg", 0.01, True): 0.025,
                      ("fednova", -1, False): 0.01, ("fednova", -1, True): 0.03}.items():
        assert summ.loc[key, "paired_n"] == 3, key
        assert summ.loc[key, "paired_diff_mean"] == pytest.approx(want, abs=1e-12), key
    assert pd.isna(summ.loc[("fedavg", 0.0, False), "paired_diff_mean"])
    assert (out / "summary.md").read_text().count("(reference)") == 1
    assert main([str(root), "--paired-against", "fedavg@train.lr=0.1", "--no-plots"]) == 2
    assert "train.lr is not a swept key" in capsys.readouterr().err


def test_plot_claims_draws_compare_drift_from_nested_sweeps(tmp_path):
    """scripts/plot_claims.py compare_drift reads run folders at any depth below <runs>/compare_drift (the
    evidence ran as two sub-sweeps), skips .hydra/config.yaml, and tells FedProx from FedAvg and ± Disco."""
    import importlib.util
    import subprocess
    import sys

    from fedagg_testing import ROOT

    for sub, part in (("base", "dirichlet"), ("state", "flwr_pathological")):
        _sweep(tmp_path / "runs" / "compare_drift" / sub)
        for cfg_path in (tmp_path / "runs" / "compare_drift" / sub).glob("*/config.yaml"):
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["partition"]["name"] = part
            cfg_path.write_text(yaml.safe_dump(cfg))
            (cfg_path.parent / ".hydra").mkdir()
            (cfg_path.parent / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"not": "a run"}))
    f = subprocess.run([sys.executable, "scripts/plot_claims.py", "compare_drift", "--runs", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "fig")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f.returncode == 0, f.stderr[-2000:]
    png = tmp_path / "fig" / "compare_drift_accuracy.png"
    assert png.stat().st_size > 10_000
    spec = importlib.util.spec_from_file_location("plot_claims", ROOT / "scripts" / "plot_claims.py")
    pc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pc)
    runs = pc.load_runs(tmp_path / "runs" / "compare_drift")
    assert len(runs) == 36  # 2 sub-sweeps x 3 rules x 2 x 3 seeds; no .hydra config counted
    assert sorted({pc.drift_label(r["cfg"]) for r in runs}) == [
        "fedavg", "fedavg + Disco", "fednova", "fednova + Disco", "fedprox", "fedprox + Disco"]


@pytest.mark.parametrize("vectorize", ["false", "auto"])
def test_scaffold_run_equals_the_reference_loop_end_to_end(tmp_path, vectorize):
    """fedagg's SCAFFOLD over 3 rounds (client state kept between them) equals scripts/scaffold_reference.py, the
    NIID-Bench / FedDisco loop written apart from fedagg's training code, on the same clients and minibatches:
    the global model to float rounding, and each round's test accuracy. (RESULTS §7 runs the same script on
    compare_drift's clients to check SCAFFOLD's collapse there.)"""
    import importlib.util

    import numpy as np
    import torch
    from fedagg_testing import ROOT, SMALL

    from fedagg.experiment import build, run

    spec = importlib.util.spec_from_file_location("scaffold_reference", ROOT / "scripts" / "scaffold_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    over = [*SMALL, "participation=full", "partition.alpha=0.3", "runtime=inprocess", f"runtime.vectorize={vectorize}",
            "aggregator=scaffold", "aggregator.weighted=true", "aggregator.c_update=mean", "train.epochs=2"]
    rows = run(compose(*over), tmp_path / "run")
    glob, scores = ref.reference_run(build(compose(*over)), 3)
    got = torch.load(tmp_path / "run" / "model.pt")
    for k, v in glob.items():
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-4, atol=1e-5, err_msg=k)
    assert [float(r["test_accuracy"]) for r in rows] == pytest.approx([a for a, _ in scores], abs=2e-3)
    assert scores[-1][0] > scores[0][0]  # it learns: the comparison is not of two untrained models
