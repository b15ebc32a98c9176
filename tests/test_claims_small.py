"""CI smoke test of every evidence preset: the whole claim grid (every
method and condition, seed 0, 2 rounds) through `fedagg -m`, then the
report line of the preset's header (`fedagg-report ... --paired-against
<baseline>`) and the figure script on it. The full sweeps are in
experiments/RESULTS.md."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fedagg_testing import ROOT, fedagg_cmd
from omegaconf import OmegaConf

from fedagg.config import CONF_DIR

CLAIMS = sorted(p.stem[: -len("_small")] for p in (Path(CONF_DIR) / "experiment").glob("claim_*_small.yaml"))


def test_every_claim_has_a_small_variant():
    full = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("claim_*.yaml") if not p.stem.endswith("_small"))
    assert full == CLAIMS and len(CLAIMS) == 6


@pytest.mark.slow
@pytest.mark.parametrize("claim", CLAIMS)
def test_claim_small_sweep_runs_and_reports(claim, tmp_path):
    sweep = tmp_path / claim
    p = subprocess.run(fedagg_cmd() + ["-m", f"+experiment={claim}_small", f"hydra.sweep.dir={sweep}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    statuses = [json.loads(s.read_text())["status"] for s in sweep.glob("*/status.json")]
    assert len(statuses) >= 4 and set(statuses) == {"completed"}, statuses
    header = (Path(CONF_DIR) / "experiment" / f"{claim}.yaml").read_text()
    ref = re.search(r"fedagg-report \S+ .*--paired-against (\w+)", header)
    assert ref, f"{claim}.yaml's header shows no fedagg-report --paired-against line"
    r = subprocess.run([sys.executable, "-m", "fedagg.report", str(sweep), "--no-plots", "--paired-against", ref[1]],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (sweep / "summary.md").exists() and "±" in r.stdout and "(reference)" in r.stdout
    assert re.search(r"[+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\] \(n=1\)", r.stdout), r.stdout[-1500:]
    runs = tmp_path / "runs"
    runs.mkdir()
    sweep.rename(runs / claim)
    f = subprocess.run([sys.executable, "scripts/plot_claims.py", claim[len("claim_"):], "--runs", str(runs),
                        "--out", str(tmp_path / "fig")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f.returncode == 0, f.stderr[-2000:]
    pngs = list((tmp_path / "fig").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000, pngs


@pytest.mark.slow
def test_fedau_client_stats_reads_the_hetero_smoke_sweep(tmp_path):
    """scripts/fedau_client_stats.py (the per-client scores and FedAU's largest ω quoted in RESULTS.md): its
    numbers are the runs' own -- the last eval round's client_acc_mean from metrics.csv, the largest ω in
    rounds.jsonl and ω/N -- and the reference rule's row is the reference."""
    sweep = tmp_path / "hetero"
    p = subprocess.run(fedagg_cmd() + ["-m", "+experiment=claim_fedau_hetero_small", "participation=bernoulli",
                                       "participation.p_min=0.3", "aggregator=avg_participating,fedau", "rounds=6", f"hydra.sweep.dir={sweep}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run([sys.executable, "scripts/fedau_client_stats.py", str(sweep)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {c[1]: c for c in (line.split(" | ") for line in r.stdout.splitlines() if line.startswith("| bernoulli"))}
    assert set(rows) == {"avg_participating", "fedau K=inf"}, r.stdout
    assert rows["avg_participating"][4] == "(reference)" and rows["fedau K=inf"][4] != "(reference)"
    fedau_run = next(d for d in sweep.iterdir() if (d / "config.yaml").is_file()
                     and OmegaConf.load(d / "config.yaml").aggregator.name == "fedau")
    import pandas as pd

    m = pd.read_csv(fedau_run / "metrics.csv").dropna(subset=["client_acc_mean"])
    assert int(m["round"].iloc[-1]) == 6 and rows["fedau K=inf"][3].startswith(f"{m['client_acc_mean'].iloc[-1]:.4f}")
    omega = [w for line in (fedau_run / "rounds.jsonl").read_text().splitlines() for w in json.loads(line).get("omega", [])]
    max_w = rows["fedau K=inf"][-1].rstrip(" |")
    assert rows["fedau K=inf"][-2] == f"{max(omega):.1f}" and max_w == f"{max(omega) / 10:.3f}", r.stdout
