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

from fedagg.config import CONF_DIR

CLAIMS = sorted(p.stem[: -len("_small")] for p in (Path(CONF_DIR) / "experiment").glob("claim_*_small.yaml"))


def test_every_claim_has_a_small_variant():
    full = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("claim_*.yaml") if not p.stem.endswith("_small"))
    assert full == CLAIMS and len(CLAIMS) == 5


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
