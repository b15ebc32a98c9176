#!/usr/bin/env python
"""Per-client scores and FedAU's weights of a FedAU claim sweep, paired against a reference rule: what
experiments/RESULTS.md quotes beside fedagg-report's test-accuracy table.

    python scripts/fedau_client_stats.py experiments/runs/claim_fedau_hetero [--against avg_participating]

For each completed run: the last ``eval.every`` round's mean and worst-10 % client accuracy (each client's
held-out ``val_fraction`` split, ``client_acc_mean`` / ``client_acc_worst10`` in metrics.csv) and, from
rounds.jsonl, the largest ω any client got and the largest single-client weight ω_n/N (FedAU only). Per
(participation, rule): mean ± sample std over seeds, the paired difference to ``--against`` on the same seed
and participation, with fedagg-report's paired bootstrap 95 % CI (10,000 resamples, stream
``(0, "report-bootstrap")``), and for FedAU the seeds whose final test accuracy (mean of the last 20 rounds) is
below 0.5 with their largest ω.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedagg.report.summary import paired_bootstrap_ci


def rule(cfg: dict) -> str:
    a = cfg["aggregator"]
    if a["name"] == "fedau":
        return "fedau K=inf" if a.get("K") is None else f"fedau K={a['K']}"
    return str(a["name"])


def load(sweep: Path) -> pd.DataFrame:
    rows = []
    for cfg_path in sorted(sweep.glob("*/config.yaml")):
        run = cfg_path.parent
        st = run / "status.json"
        if not st.exists() or json.loads(st.read_text()).get("status") != "completed":
            continue
        cfg = yaml.safe_load(cfg_path.read_text())
        m = pd.read_csv(run / "metrics.csv")
        ev = m.dropna(subset=["client_acc_mean"]) if "client_acc_mean" in m.columns else m.iloc[:0]
        omega = [w for r in map(json.loads, (run / "rounds.jsonl").read_text().splitlines()) for w in r.get("omega", [])]
        rows.append({
            "participation": cfg["participation"]["name"], "rule": rule(cfg), "seed": cfg["seed"],
            "test_acc": float(m["test_accuracy"].iloc[-20:].mean()),
            "client_mean": float(ev["client_acc_mean"].iloc[-1]) if len(ev) else np.nan,
            "client_worst10": float(ev["client_acc_worst10"].iloc[-1]) if len(ev) else np.nan,
            "eval_round": int(ev["round"].iloc[-1]) if len(ev) else -1,
            "max_omega": max(omega) if omega else np.nan,
            "max_weight": max(omega) / cfg["num_clients"] if omega else np.nan,
        })
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep")
    ap.add_argument("--against", default="avg_participating")
    a = ap.parse_args()
    df = load(Path(a.sweep))
    if df.empty:
        print(f"{a.sweep}: no completed runs", file=sys.stderr)
        return 1
    print(f"per-client scores at round {sorted(set(df.eval_round))}; Δ paired against {a.against} [95% CI]\n")
    print("| participation | rule | n | client acc mean | Δ | worst-10 % client acc | Δ | max ω | max ω/N |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (p, r), g in df.groupby(["participation", "rule"]):
        ref = df[(df.participation == p) & (df.rule == a.against)].set_index("seed")
        g = g.set_index("seed")
        cells = []
        for col in ("client_mean", "client_worst10"):
            x = g[col]
            d = (x - ref[col]).dropna()
            ci = "(reference)" if r == a.against else (
                "—" if d.empty else "{:+.4f} [{:+.4f}, {:+.4f}] (n={})".format(d.mean(), *paired_bootstrap_ci(d.to_numpy()), len(d)))
            cells += [f"{x.mean():.4f} ± {x.std(ddof=1):.4f}" if len(x) > 1 else f"{x.mean():.4f}", ci]
        om = "—" if g.max_omega.isna().all() else f"{g.max_omega.max():.1f}"
        ow = "—" if g.max_weight.isna().all() else f"{g.max_weight.max():.3f}"
        print(f"| {p} | {r} | {len(g)} | " + " | ".join(cells) + f" | {om} | {ow} |")
    low = df[df.rule.str.startswith("fedau") & (df.test_acc < 0.5)]
    print("\nFedAU runs below 0.5 final test accuracy:" + (" none" if low.empty else ""))
    for _, x in low.iterrows():
        print(f"  {x.participation} {x.rule} seed {x.seed}: test acc {x.test_acc:.4f}, max ω {x.max_omega:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
