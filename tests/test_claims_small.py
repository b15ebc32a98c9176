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
    assert full == CLAIMS and len(CLAIMS) == 7


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
    ref = re.search(r"fedagg-report \S+ .*--paired-against (\S+)", header)
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


@pytest.mark.slow
def test_fedfix_arms_keep_their_clock_and_the_report_reads_it_at_fixed_times(tmp_path):
    """claim_fedfix_small's five arms (seed 0, 6 clients, 4 updates each) on one device draw: sync waits for its
    slowest client, the deadline arm drops who is past 2 s and ends every round at 2 s, FedAsync applies one
    arrival per update (staleness = updates since its download, > 0 here), FedFix updates every 2 s with the
    window's arrivals weighted p_i ceil(T / 2 s), p_i read off the sync run's FedAvg weights (every client
    replied there, so they are n_i / sum n); then --at-time reads each run's last row at or before T."""
    sweep = tmp_path / "fedfix"
    p = subprocess.run(fedagg_cmd() + ["-m", "+experiment=claim_fedfix_small", f"hydra.sweep.dir={sweep}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    import math

    import pandas as pd

    runs = {}
    for d in sweep.iterdir():
        if (d / "config.yaml").is_file():
            s = OmegaConf.load(d / "config.yaml").server
            arm = s.mode if s.deadline_s is None else f"{s.mode}@{s.deadline_s:g}"
            lines = [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]
            runs[arm] = (pd.read_csv(d / "metrics.csv"), lines, d)
    assert set(runs) == {"sync", "sync@2", "fedasync", "fedbuff", "fedfix"}
    for arm, (m, lines, _) in runs.items():
        assert list(m["round"]) == [1, 2, 3, 4], arm
        assert m["sim_time_s"].is_monotonic_increasing and m["sim_time_s"].diff().dropna().gt(0).all(), arm
        if arm.startswith("sync"):
            assert "model_version" not in m and "staleness_max" not in m and all("async" not in x for x in lines)
        else:
            assert list(m["model_version"]) == [1, 2, 3, 4], arm
            for x in lines:  # staleness = (version created - 1) - version sent, for every applied job
                assert [j["staleness"] for j in x["async"]["applied"]] == [
                    x["round"] - 1 - j["version"] for j in x["async"]["applied"]], arm

    m, lines, _ = runs["sync"]
    for x, end in zip(lines, m["sim_time_s"]):  # a round ends with its slowest client
        sim = x["sim"]
        assert sim["end_s"] == pytest.approx(end)
        assert end - sim["start_s"] == pytest.approx(max(c["seconds"] for c in sim["clients"].values()))
    share = dict(zip(lines[0]["weight_clients"], lines[0]["weights"]))
    assert len(share) == 6 and sum(share.values()) == pytest.approx(1.0)

    m, lines, _ = runs["sync@2"]
    assert list(m["sim_time_s"]) == pytest.approx([2.0, 4.0, 6.0, 8.0])
    for x in lines:
        late = {int(c) for c, t in x["sim"]["clients"].items() if t["seconds"] > 2.0}
        assert late and set(x["replied"]) == set(range(6)) - late and {int(c) for c in x["failed"]} == late

    m, lines, _ = runs["fedasync"]
    assert (m["clients_replied"] == 1).all() and m["staleness_max"].max() > 0
    for x, t in zip(lines, m["sim_time_s"]):  # the update happens at its one arrival
        (job,) = x["async"]["applied"]
        assert job["arrival_s"] == pytest.approx(t) and job["weight"] == pytest.approx(0.6 * (job["staleness"] + 1) ** -0.5)

    m, lines, _ = runs["fedfix"]
    assert list(m["sim_time_s"]) == pytest.approx([2.0, 4.0, 6.0, 8.0])
    spans = []
    for x in lines:
        v = x["round"]
        for j in x["async"]["applied"]:
            assert 2.0 * (v - 1) < j["arrival_s"] <= 2.0 * v + 1e-9
            windows = math.ceil((j["arrival_s"] - j["dispatch_s"]) / 2.0 - 1e-9)
            spans.append(windows)
            assert j["weight"] == pytest.approx(share[j["client"]] * windows, rel=1e-9)
    assert max(spans) >= 2  # some job spans several windows: the weight's ceil(T / 2 s) is exercised

    r = subprocess.run([sys.executable, "-m", "fedagg.report", str(sweep), "--no-plots", "--target", "0.09",
                        "--at-time", "1", "--at-time", "5",
                        "--paired-against", "fedavg@server.mode=sync,server.deadline_s=null"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = pd.read_csv(sweep / "runs.csv")
    for _, row in rep.iterrows():
        m = pd.read_csv(sweep / row["run"] / "metrics.csv")
        for t in (1.0, 5.0):
            before = m[m["sim_time_s"] <= t]
            want = float(before["test_accuracy"].iloc[-1]) if len(before) and m["sim_time_s"].max() >= t else None
            got = row[f"acc_at_{t:g}s"]
            assert (pd.isna(got) and want is None) or got == pytest.approx(want), (row["run"], t)
    assert "| acc at 1 s | Δ acc at 1 s vs" in r.stdout and "| acc at 5 s |" in r.stdout
    assert rep["acc_at_5s"].notna().sum() == 4  # FedAsync's 4 updates end before 5 s: not covered
