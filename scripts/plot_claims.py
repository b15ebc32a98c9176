#!/usr/bin/env python
"""Figures for experiments/RESULTS.md, read from the claim sweeps' run folders
(each run: config.yaml + metrics.csv, as written by ``fedagg -m``).

    python scripts/plot_claims.py [--runs experiments/runs] [--out experiments/figures] [claim ...]

claims: fedau fedau_hetero feddisco fedlaw ida gossip fedfix compare_drift (default: every one whose sweep folder
``<runs>/claim_<name>`` -- for compare_drift ``<runs>/compare_drift``, run folders at any depth below it -- exists). Curves are the mean over seeds with a ±1 sample-std band (ddof=1, as fedagg-report); each accuracy
figure has a zoomed panel on the last 40 % of the rounds, where the full-range curves overlap (its y-range
fits the mean curves within 0.15 of the best; one far below them is whole in the full panel). Nothing is
smoothed or dropped (failed / unfinished runs, i.e. without status "completed", are skipped and counted on
stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 80


def load_runs(sweep: Path) -> list[dict]:
    runs, skipped = [], 0
    for cfg_path in sorted(p for p in sweep.rglob("config.yaml") if p.parent.name != ".hydra"):
        run = cfg_path.parent
        st = run / "status.json"
        m = run / "metrics.csv"
        ok = st.exists() and json.loads(st.read_text()).get("status") == "completed" and m.exists()
        if not ok:
            skipped += 1
            continue
        runs.append({"cfg": yaml.safe_load(cfg_path.read_text()), "df": pd.read_csv(m), "dir": run})
    if skipped:
        print(f"{sweep.name}: skipped {skipped} run(s) that are not completed", file=sys.stderr)
    return runs


def group(runs: list[dict], key) -> dict:
    out = defaultdict(list)
    for r in runs:
        out[key(r["cfg"])].append(r["df"])
    return out


def band(ax, dfs: list[pd.DataFrame], col: str, label: str, x_from: float = 0.0, **kw) -> None:
    """Mean over seeds ± 1 sample std of ``col`` per round (rounds >= ``x_from`` only)."""
    dfs = [d for d in dfs if col in d.columns]
    if not dfs:
        return
    n = min(len(d) for d in dfs)
    x = dfs[0]["round"].to_numpy()[:n]
    y = np.stack([d[col].to_numpy(dtype=float)[:n] for d in dfs])
    keep = x >= x_from
    x, y = x[keep], y[:, keep]
    m, s = y.mean(0), (y.std(0, ddof=1) if len(y) > 1 else np.zeros(y.shape[1]))
    (line,) = ax.plot(x, m, label=f"{label} (n={len(dfs)})", lw=1.3, **kw)
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15, lw=0)


ZOOM = 0.6  # zoomed panels show the last 40 % of the rounds, where the curves overlap in the full view


def zoomed(ax, title: str) -> None:
    """Title the zoomed panel and fit its y-range to the mean curves whose median in the window is within
    0.15 of the best one's (a curve far below the others, e.g. a rule that collapsed in some seeds, leaves the
    panel there and stays whole in the full-range panel above)."""
    ax.set_title(f"{title} (zoom: last {100 - int(ZOOM * 100)}% of rounds)", fontsize=9)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    means = [np.asarray(line.get_ydata(), dtype=float) for line in ax.lines]
    means = [m[np.isfinite(m)] for m in means if np.isfinite(m).any()]
    if means:
        best = max(float(np.median(m)) for m in means)
        keep = [m for m in means if float(np.median(m)) >= best - 0.15]
        lo, hi = min(float(np.percentile(m, 5)) for m in keep), max(float(m.max()) for m in keep)
        pad = 0.1 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)


def last_round(runs) -> int:
    return max(int(r["df"]["round"].max()) for r in runs)


def save(fig, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


def method(cfg: dict) -> str:
    a = cfg["aggregator"]
    name = a["name"]
    if name == "fedau":
        return "FedAU K=∞" if a.get("K") is None else f"FedAU K={a['K']}"
    if name == "ida":
        return {"ida": "IDA", "intrac": "INTRAC", "ida_fedavg": "IDA+FedAvg", "ida_intrac": "IDA+INTRAC"}[a["variant"]]
    if name == "gossip":
        topo = {"ring": "ring", "k_regular": f"{a['degree']}-regular"}.get(a["topology"], a["topology"])
        return f"gossip {topo} {'VC' if a['variance_correction'] else 'plain'}"
    return name


# --------------------------------------------------------------------------- claims
def full_and_zoom(top, bottom, g: dict, style, title: str, x0: float) -> None:
    """Test accuracy of every group in ``g``: all rounds on ``top``, rounds >= ``x0`` on ``bottom``."""
    for i, lab in enumerate(sorted(g)):
        kw = style(i, lab)
        band(top, g[lab], "test_accuracy", lab, **kw)
        band(bottom, g[lab], "test_accuracy", lab, x_from=x0, **kw)
    top.set_title(title, fontsize=9)
    top.set_xlabel("round")
    top.grid(alpha=0.3)
    zoomed(bottom, title)


def grid_done(axes, out: Path) -> None:
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    save(axes[0, 0].figure, out)


def fedau(runs, out: Path, name: str = "claim_fedau") -> None:
    pats = [p for p in ("bernoulli", "markov", "cyclic") if any(r["cfg"]["participation"]["name"] == p for r in runs)]
    fig, axes = plt.subplots(2, len(pats), figsize=(4 * len(pats), 6.4), squeeze=False)
    for col, p in enumerate(pats):
        g = group([r for r in runs if r["cfg"]["participation"]["name"] == p], method)
        full_and_zoom(axes[0, col], axes[1, col], g,
                      lambda i, lab: {"ls": "-" if "FedAU" in lab else ("--" if lab != "known_prob" else ":")},
                      f"participation={p}", ZOOM * last_round(runs))
    grid_done(axes, out / f"{name}_accuracy.png")


def disco_label(c: dict) -> str:
    base = "FedAvgM" if c.get("vars", {}).get("base", c.get("base")) == "fedavgm" else "FedAvg"
    return base + (" + Disco" if c["aggregator"]["name"] == "feddisco" else "")


def disco_pairs(runs, out: Path, label, panels: list[tuple[str, str]], size: tuple[float, float]) -> None:
    """Test accuracy per round, a column per partition in ``panels`` (name, title); a colour per base method,
    solid with FedDisco's weights and dashed without (labels sort in pairs: 'X', 'X + Disco')."""
    fig, axes = plt.subplots(2, len(panels), figsize=size, squeeze=False)
    for col, (pname, title) in enumerate(panels):
        g = group([r for r in runs if r["cfg"]["partition"]["name"] == pname], label)
        full_and_zoom(axes[0, col], axes[1, col], g,
                      lambda i, lab: {"ls": "-" if "Disco" in lab else "--", "color": f"C{i // 2}"},
                      title, ZOOM * last_round(runs))
    grid_done(axes, out)


def feddisco(runs, out: Path) -> None:
    disco_pairs(runs, out / "claim_feddisco_accuracy.png", disco_label,
                [("dirichlet", "NIID-1 (Dirichlet β=0.5, 10 clients)"), ("niid2", "NIID-2 (5 biased + 1 unbiased)")],
                (9, 6.4))


def fedlaw(runs, out: Path) -> None:
    x0 = ZOOM * last_round(runs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    g = group(runs, lambda c: (c["partition"]["alpha"], c["aggregator"]["name"]))
    alphas = sorted({a for a, _ in g})
    for (alpha, name) in sorted(g):
        kw = {"ls": {"fedavg": "--", "fedlaw": "-"}.get(name, ":"), "color": f"C{alphas.index(alpha)}"}
        band(axes[0], g[(alpha, name)], "test_accuracy", f"{name} α={alpha}", **kw)
        band(axes[1], g[(alpha, name)], "test_accuracy", f"{name} α={alpha}", x_from=x0, **kw)
        if name != "fedavg":
            band(axes[2], g[(alpha, name)], "fedlaw_gamma", f"{name} γ, α={alpha}", **kw)
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("test accuracy")
    axes[2].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[2].set_ylabel("learned γ (global shrinking)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    zoomed(axes[1], "accuracy")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    save(fig, out / "claim_fedlaw_accuracy_gamma.png")


def ida(runs, out: Path, last_k: int = 5, name: str = "claim_ida") -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    g = group(runs, lambda c: (method(c), float(c["noise"]["fraction"])))
    methods = sorted({m for m, _ in g})
    for m in methods:
        fr = sorted(f for mm, f in g if mm == m)
        finals = [np.array([d["test_accuracy"].to_numpy()[-last_k:].mean() for d in g[(m, f)]]) for f in fr]
        axes[0].errorbar(fr, [x.mean() for x in finals], yerr=[x.std(ddof=1) if len(x) > 1 else 0.0 for x in finals], marker="o", capsize=3,
                         label=m, lw=1.3)
    noise = runs[0]["cfg"]["noise"]["kind"]
    axes[0].set_xlabel(f"fraction of noisy clients ({noise})")
    axes[0].set_ylabel(f"final test accuracy (mean of last {last_k} rounds)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    top = max(f for _, f in g)
    x0 = ZOOM * last_round(runs)
    for m in methods:
        band(axes[1], g[(m, top)], "test_accuracy", m)
        band(axes[2], g[(m, top)], "test_accuracy", m, x_from=x0)
    axes[1].set_title(f"noisy fraction {top}", fontsize=9)
    axes[1].set_xlabel("round")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    zoomed(axes[2], f"noisy fraction {top}")
    save(fig, out / f"{name}_noise.png")


def gossip(runs, out: Path) -> None:
    x0 = ZOOM * last_round(runs)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.6))
    g = group(runs, method)
    for i, lab in enumerate(sorted(g)):
        kw = {"ls": "-" if "VC" in lab else ("--" if "plain" in lab else ":"), "color": f"C{i}"}
        band(axes[0, 0], g[lab], "test_accuracy", lab, **kw)
        band(axes[1, 0], g[lab], "test_accuracy", lab, x_from=x0, **kw)
        # a FedAvg node holds the global model: its node accuracy is the test accuracy
        node = "node_accuracy_mean" if "gossip" in lab else "test_accuracy"
        worst = "node_accuracy_worst" if "gossip" in lab else "test_accuracy"
        band(axes[0, 1], g[lab], node, lab, **kw)
        band(axes[0, 2], g[lab], worst, lab, **kw)
        if "gossip" in lab:
            band(axes[1, 1], g[lab], "node_layer_variance", lab, **kw)
            band(axes[1, 2], g[lab], "consensus_distance", lab, **kw)
    axes[0, 0].set_ylabel("test accuracy of the mean model")
    axes[0, 0].set_title("mean of the node models", fontsize=9)
    axes[1, 0].set_ylabel("test accuracy of the mean model")
    zoomed(axes[1, 0], "mean model")
    axes[0, 1].set_ylabel("mean over nodes of each node's accuracy")
    axes[0, 1].set_title("node accuracy, mean (FedAvg: its global model)", fontsize=9)
    axes[0, 2].set_ylabel("worst node's accuracy")
    axes[0, 2].set_title("node accuracy, worst node", fontsize=9)
    axes[1, 1].set_ylabel("weight variance of a node's layers")
    axes[1, 1].set_yscale("log")
    axes[1, 2].set_ylabel("consensus distance")
    axes[1, 2].set_yscale("log")
    for ax in axes.flat:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    save(fig, out / "claim_gossip.png")


def fedau_hetero(runs, out: Path) -> None:
    fedau(runs, out, "claim_fedau_hetero")


def arm(cfg: dict) -> str:
    """claim_fedfix's arm of a run: the server mode, and sync's deadline."""
    s = cfg["server"]
    if s["mode"] == "sync":
        return "sync FedAvg" if s.get("deadline_s") is None else f"sync FedAvg, deadline {s['deadline_s']:g} s"
    if s["mode"] == "fedbuff":
        return f"FedBuff (K={s.get('buffer_size')})"
    if s["mode"] == "fedfix":
        return f"FedFix (window {s.get('window_s'):g} s)"
    return "FedAsync" if s["mode"] == "fedasync" else str(s["mode"])


def at_times(df: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """Test accuracy of the last model scored at or before each simulated time of ``grid`` (NaN before the
    first row): the step function fedagg-report --at-time and report_accuracy_time.png read."""
    t = df["sim_time_s"].to_numpy(dtype=float)
    a = df["test_accuracy"].to_numpy(dtype=float)
    k = np.searchsorted(t, grid + 1e-9, side="right") - 1
    return np.where(k >= 0, a[np.maximum(k, 0)], np.nan)


def fedfix(runs, out: Path) -> None:
    """Accuracy against simulated time per arm (mean ± std over seeds up to the earliest end among all runs),
    a zoom on the last 40 % of that horizon, and every seed of FedAsync and FedFix on its own."""
    g = group(runs, arm)
    horizon = min(float(d["sim_time_s"].max()) for dfs in g.values() for d in dfs)
    grid = np.linspace(0.0, horizon, 600)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    for i, lab in enumerate(sorted(g)):
        y = np.stack([at_times(d, grid) for d in g[lab]])
        with warnings.catch_warnings():  # all-NaN columns before the first update
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(y, axis=0)
            sd = np.nanstd(y, axis=0, ddof=1) if len(y) > 1 else np.zeros(grid.size)
        for ax, keep in ((axes[0], grid >= 0), (axes[1], grid >= ZOOM * horizon)):
            (line,) = ax.plot(grid[keep], m[keep], color=f"C{i}", lw=1.3, label=f"{lab} (n={len(y)})")
            ax.fill_between(grid[keep], (m - sd)[keep], (m + sd)[keep], color=line.get_color(), alpha=0.15, lw=0)
        if lab.startswith(("FedAsync", "FedFix")):
            for j, row in enumerate(y):
                axes[2].plot(grid, row, color=f"C{i}", lw=0.8, alpha=0.8, label=lab if j == 0 else None)
    axes[0].set_title("test accuracy against simulated time (mean ± std over seeds)", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    zoomed(axes[1], "same")
    axes[1].set_title(f"zoom: the last {100 - int(ZOOM * 100)}% of the {horizon:.0f} s", fontsize=9)
    axes[2].set_title("FedAsync and FedFix, every seed", fontsize=9)
    axes[2].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xlabel("simulated seconds")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    save(fig, out / "claim_fedfix_accuracy_time.png")


def drift_label(c: dict) -> str:
    """compare_drift's method of a run: the rule (FedProx = FedAvg with the proximal term) and FedDisco's weights."""
    a = c["aggregator"]
    name = "fedprox" if a["name"] == "fedavg" and a.get("proximal_mu") else a["name"]
    return name + (" + Disco" if a.get("disco") else "")


def compare_drift(runs, out: Path) -> None:
    """Test accuracy per round under the two label skews; a colour per rule, dashed without FedDisco's weights."""
    disco_pairs(runs, out / "compare_drift_accuracy.png", drift_label,
                [("dirichlet", "Dir(0.1) label skew (labeldir01)"), ("flwr_pathological", "#C=2 label skew (label2)")],
                (10, 6.4))


CLAIMS = {"fedau": fedau, "fedau_hetero": fedau_hetero, "feddisco": feddisco, "fedlaw": fedlaw, "ida": ida, "gossip": gossip,
          "fedfix": fedfix, "compare_drift": compare_drift}
SWEEP = {"compare_drift": "compare_drift"}  # the sweep folder of a comparison that is not a claim_<name>


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("claims", nargs="*", help=f"any of {', '.join(CLAIMS)} (default: all)")
    ap.add_argument("--runs", default="experiments/runs")
    ap.add_argument("--out", default="experiments/figures")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bad = sorted(set(a.claims) - set(CLAIMS))
    if bad:
        ap.error(f"unknown claim(s) {bad}; choose from {list(CLAIMS)}")
    for name in a.claims or list(CLAIMS):
        sweep = Path(a.runs) / SWEEP.get(name, f"claim_{name}")
        if not sweep.is_dir():
            print(f"{sweep}: no sweep folder, skipped", file=sys.stderr)
            continue
        runs = load_runs(sweep)
        if not runs:
            print(f"{sweep}: no completed runs", file=sys.stderr)
            continue
        CLAIMS[name](runs, out)


if __name__ == "__main__":
    main()
