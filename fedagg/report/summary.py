"""``fedagg-report <sweep folder> [--last-k 5] [--target 0.6] [--out DIR]``

Reads every run folder under a sweep (any depth; a run is a folder with
config.yaml, or with status.json for a job that failed before writing its
config) and writes into ``--out`` (default: the sweep folder):

* ``runs.csv``: one row per run: the swept keys, seed, status, final accuracy
  (mean of the last k rounds), best accuracy, rounds to reach ``--target``;
* ``summary.csv`` / ``summary.md``: one row per group of runs that differ
  only in the seed: n completed, failed, mean ± sample std (ddof=1) over
  seeds; the Markdown table is printed to stdout too;
* ``accuracy.png`` (test accuracy vs round, mean ± std band per group),
  ``participation.png`` (who replied in each round, one run per group) and
  ``weights.png`` (aggregation weights per client and round, when the
  aggregator reported them).

Swept keys are the config keys (nested keys flattened with dots) that take
two or more different values across the runs. Failed runs (status.json says
failed, or is missing, or has no metrics) are counted and shown, never
dropped.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ACC = "test_accuracy"


class ReportError(Exception):
    """Bad input: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- reading
def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    elif prefix:
        out[prefix] = d
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def find_runs(root: Path) -> list[Path]:
    found: set[Path] = set()
    for name in ("config.yaml", "status.json"):
        for p in root.rglob(name):
            rel = p.parent.relative_to(root).parts
            if any(part.startswith(".") for part in rel):  # .hydra/config.yaml, hidden folders
                continue
            found.add(p.parent)
    return sorted(found)


def _load_config(run: Path) -> dict[str, Any]:
    import yaml

    for p in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if p.exists():
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError:
                continue
            if isinstance(data, dict):
                data.pop("hydra", None)
                return data
    return {}


def _load_status(run: Path) -> tuple[str, str]:
    p = run / "status.json"
    if not p.exists():
        return "failed", "no status.json"
    try:
        st = json.loads(p.read_text())
    except (OSError, ValueError):
        return "failed", "unreadable status.json"
    s = str(st.get("status", ""))
    if s == "completed":
        return "completed", ""
    err = str(st.get("error", "") or (f"status {s!r}" if s else "no status"))
    return "failed", err.splitlines()[0][:200] if err else ""


def _load_metrics(run: Path):
    import pandas as pd

    p = run / "metrics.csv"
    if not p.exists() or p.stat().st_size == 0:
        return None
    try:
        df = pd.read_csv(p)
    except (ValueError, OSError):
        return None
    if df.empty or "round" not in df.columns or ACC not in df.columns:
        return None
    return df.sort_values("round").reset_index(drop=True)


def load_rounds(run: Path) -> list[dict[str, Any]]:
    p = run / "rounds.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


# --------------------------------------------------------------------------- tables
def run_stats(df: Any, last_k: int, target: float | None) -> dict[str, Any]:
    acc = df[ACC].astype(float)
    k = max(1, min(int(last_k), len(acc)))
    reached = df.loc[acc >= target, "round"] if target is not None else []
    return {
        "rounds_done": int(df["round"].max()),
        "final_accuracy": float(acc.iloc[-k:].mean()),
        "best_accuracy": float(acc.max()),
        "rounds_to_target": (int(reached.iloc[0]) if len(reached) else None) if target is not None else None,
    }


def swept_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Keys with two or more distinct values among the runs that have them
    (a key only some aggregators have does not count by itself)."""
    order: list[str] = []
    values: dict[str, set[Any]] = {}
    for c in configs:
        for k, v in c.items():
            if k not in values:
                values[k] = set()
                order.append(k)
            values[k].add(_hashable(v))
    return [k for k in order if len(values[k]) > 1]


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n < 2 or std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(df: Any) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if v is None else str(v) for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


def _label(keys: list[str], vals: tuple) -> str:
    if not keys:
        return "all runs"
    return ", ".join(f"{k.split('.')[0] if k.endswith('.name') else k}={v}" for k, v in zip(keys, vals))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


def build_tables(root: Path, last_k: int = 5, target: float | None = None):
    """(runs DataFrame, summary DataFrame, group keys, curves per run, run folders)."""
    import pandas as pd

    runs = find_runs(root)
    if not runs:
        raise ReportError(f"no runs under {root} (a run is a folder with config.yaml or status.json)")
    configs = [flatten(_load_config(r)) for r in runs]
    metrics = []
    for r in runs:
        metrics.append(_load_metrics(r))
    ok_cols = [set(m.columns) for m in metrics if m is not None]
    if ok_cols:
        common = set.intersection(*ok_cols)
        if any(c != common for c in ok_cols):
            extra = sorted(set.union(*ok_cols) - common)
            print(f"warning: runs have different metric columns; using the intersection "
                  f"(not in every run: {', '.join(extra)})", file=sys.stderr)
    keys = swept_keys(configs)
    group_keys = [k for k in keys if k != "seed"]

    rows = []
    for run, cfg, df in zip(runs, configs, metrics):
        status, error = _load_status(run)
        if status == "completed" and df is None:
            status, error = "failed", "completed but no usable metrics.csv (round, test_accuracy)"
        row: dict[str, Any] = {"run": str(run.relative_to(root)) if run != root else "."}
        for k in group_keys:
            row[k] = _hashable(cfg.get(k))
        row["seed"] = cfg.get("seed")
        row["status"] = status
        row["error"] = error
        stats = run_stats(df, last_k, target) if (df is not None and status == "completed") else {
            "rounds_done": int(df["round"].max()) if df is not None else 0,
            "final_accuracy": None, "best_accuracy": None, "rounds_to_target": None}
        row.update(stats)
        rows.append(row)
    runs_df = pd.DataFrame(rows)
    for c in ("final_accuracy", "best_accuracy", "rounds_to_target"):
        runs_df[c] = pd.to_numeric(runs_df[c], errors="coerce")
    if target is not None:
        runs_df["rounds_to_target"] = runs_df["rounds_to_target"].astype("Int64")
    # groups in sorted order, seeds ascending inside; index labels keep pointing into `runs`
    key = runs_df[group_keys].map(str).agg("|".join, axis=1) if group_keys else pd.Series("", index=runs_df.index)
    seed = pd.to_numeric(runs_df["seed"], errors="coerce")
    runs_df = runs_df.loc[pd.DataFrame({"k": key, "s": seed}).sort_values(["k", "s"], kind="stable").index]

    summary = []
    grouped = runs_df.groupby(group_keys, dropna=False, sort=False) if group_keys else [((), runs_df)]
    for vals, g in grouped:
        vals = vals if isinstance(vals, tuple) else (vals,)
        done = g[g["status"] == "completed"]
        s: dict[str, Any] = dict(zip(group_keys, vals))
        s["n"] = int(len(done))
        s["failed"] = int((g["status"] != "completed").sum())
        for c in ("final_accuracy", "best_accuracy"):
            s[f"{c}_mean"] = float(done[c].mean()) if len(done) else float("nan")
            s[f"{c}_std"] = float(done[c].std(ddof=1)) if len(done) > 1 else float("nan")
        if target is not None:
            hit = done["rounds_to_target"].dropna()
            s["reached_target"] = int(len(hit))
            s["rounds_to_target_mean"] = float(hit.mean()) if len(hit) else float("nan")
            s["rounds_to_target_std"] = float(hit.std(ddof=1)) if len(hit) > 1 else float("nan")
        summary.append(s)
    summary_df = pd.DataFrame(summary)
    curves = {run: df for run, df in zip(runs, metrics)}
    return runs_df, summary_df, group_keys, curves, runs


def summary_markdown(summary_df: Any, group_keys: list[str], last_k: int, target: float | None) -> str:
    import pandas as pd

    table = []
    for _, s in summary_df.iterrows():
        r = {k: s[k] for k in group_keys}
        r["n"] = int(s["n"])
        r["failed"] = int(s["failed"])
        r[f"final acc (last {last_k})"] = _fmt(s["final_accuracy_mean"], s["final_accuracy_std"], r["n"])
        r["best acc"] = _fmt(s["best_accuracy_mean"], s["best_accuracy_std"], r["n"])
        if target is not None:
            r[f"rounds to {target:g}"] = (
                f"{_fmt(s['rounds_to_target_mean'], s['rounds_to_target_std'], int(s['reached_target']), 1)}"
                f" ({int(s['reached_target'])}/{r['n']})"
            )
        table.append(r)
    df = pd.DataFrame(table)
    if not group_keys:
        df.insert(0, "group", "all runs")
    return _markdown(df)


# --------------------------------------------------------------------------- plots
def _groups(runs_df: Any, group_keys: list[str], run_dirs: list[Path]) -> list[tuple[str, list[int]]]:
    if not group_keys:
        return [("all runs", list(range(len(runs_df))))]
    out = []
    for vals, g in runs_df.groupby(group_keys, dropna=False, sort=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        out.append((_label(group_keys, vals), list(g.index)))
    return out


def plot_accuracy(path: Path, groups, runs_df, curves, run_dirs) -> Path | None:
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drawn = 0
    for label, idx in groups:
        series = []
        for i in idx:
            df = curves[run_dirs[i]]
            if runs_df.loc[i, "status"] == "completed" and df is not None:
                series.append(df.set_index("round")[ACC].astype(float).rename(i))
        if not series:
            continue
        m = pd.concat(series, axis=1)
        mean = m.mean(axis=1)
        std = m.std(axis=1, ddof=1).fillna(0.0)
        line, = ax.plot(mean.index, mean.values, label=f"{label} (n={len(series)})")
        ax.fill_between(mean.index, (mean - std).values, (mean + std).values, alpha=0.2, color=line.get_color())
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _representative(idx: list[int], runs_df: Any) -> int:
    done = [i for i in idx if runs_df.loc[i, "status"] == "completed"]
    return (done or idx)[0]


def _num_clients(run: Path, rounds: list[dict[str, Any]]) -> int:
    n = _load_config(run).get("num_clients")
    seen = [int(c) for d in rounds for key in ("asked", "replied", "weight_clients") for c in d.get(key, []) or []]
    cands = ([max(seen) + 1] if seen else []) + ([int(n)] if isinstance(n, int) else [])
    return max(cands) if cands else 0


def plot_heatmaps(path: Path, groups, runs_df, run_dirs, kind: str) -> Path | None:
    """kind='participation': 1 replied, 0.5 asked but no usable reply, 0 not
    asked. kind='weights': aggregation weight per client (blank = none)."""
    import matplotlib.pyplot as plt
    import numpy as np

    panels = []
    for label, idx in groups:
        i = _representative(idx, runs_df)
        rounds = load_rounds(run_dirs[i])
        if not rounds:
            continue
        if kind == "weights" and not any(d.get("weights") is not None and d.get("weight_clients") is not None
                                         for d in rounds):
            continue
        n = _num_clients(run_dirs[i], rounds)
        mat = np.full((n, len(rounds)), np.nan if kind == "weights" else 0.0)
        for j, d in enumerate(rounds):
            if kind == "participation":
                for c in d.get("asked", []) or []:
                    mat[int(c), j] = 0.5
                for c in d.get("replied", []) or []:
                    mat[int(c), j] = 1.0
            else:
                w, wc = d.get("weights"), d.get("weight_clients")
                if w is None or wc is None:
                    continue
                for c, v in zip(wc, np.ravel(np.asarray(w, dtype=float))):
                    mat[int(c), j] = v
        seed = runs_df.loc[i, "seed"]
        panels.append((f"{label}, seed {seed}", mat, [d.get("round", j + 1) for j, d in enumerate(rounds)]))
    if not panels:
        return None
    max_panels = 16
    if len(panels) > max_panels:
        print(f"warning: {kind} plot shows the first {max_panels} of {len(panels)} groups", file=sys.stderr)
        panels = panels[:max_panels]
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 2.6 * nrows + 0.4), dpi=100, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (title, mat, rnds) in zip(axes.ravel(), panels):
        if kind == "participation":
            im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1,
                           extent=(rnds[0] - 0.5, rnds[-1] + 0.5, mat.shape[0] - 0.5, -0.5))
        else:
            im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", interpolation="nearest", cmap="viridis",
                           extent=(rnds[0] - 0.5, rnds[-1] + 0.5, mat.shape[0] - 0.5, -0.5))
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("client", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("replied (black), asked but no reply (grey)" if kind == "participation"
                 else "aggregation weight per client (blank = not aggregated)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- entry
def report(root: Path, out: Path | None = None, last_k: int = 5, target: float | None = None,
           plots: bool = True) -> dict[str, Any]:
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder")
    if last_k < 1:
        raise ReportError(f"--last-k {last_k} must be >= 1")
    out = Path(out) if out is not None else root
    runs_df, summary_df, group_keys, curves, run_dirs = build_tables(root, last_k, target)
    out.mkdir(parents=True, exist_ok=True)
    runs_df.to_csv(out / "runs.csv", index=False)
    summary_df.to_csv(out / "summary.csv", index=False)
    md = summary_markdown(summary_df, group_keys, last_k, target)
    n_failed = int((runs_df["status"] != "completed").sum())
    head = (f"# Sweep {root}\n\n{len(runs_df)} runs, {n_failed} failed; grouped by "
            f"{', '.join(group_keys) or '(nothing differs but the seed)'}; mean ± sample std over seeds; "
            f"final acc = mean test accuracy of the last {last_k} rounds.\n\n")
    fails = runs_df[runs_df["status"] != "completed"]
    tail = ""
    if len(fails):
        tail = "\nFailed runs:\n\n" + "".join(f"- `{r.run}`: {r.error}\n" for r in fails.itertuples())
    (out / "summary.md").write_text(head + md + tail)
    files = {"runs": out / "runs.csv", "summary": out / "summary.md"}
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        groups = _groups(runs_df, group_keys, run_dirs)
        for name, fn in (("accuracy", lambda p: plot_accuracy(p, groups, runs_df, curves, run_dirs)),
                         ("participation", lambda p: plot_heatmaps(p, groups, runs_df, run_dirs, "participation")),
                         ("weights", lambda p: plot_heatmaps(p, groups, runs_df, run_dirs, "weights"))):
            p = fn(out / f"{name}.png")
            if p is not None:
                files[name] = p
    return {"runs": runs_df, "summary": summary_df, "group_keys": group_keys, "markdown": md,
            "text": head + md + tail, "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedagg-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="a sweep folder (e.g. multirun/<date>/<time>) or a single run folder")
    ap.add_argument("--last-k", type=int, default=5, help="final accuracy = mean of the last k rounds (5)")
    ap.add_argument("--target", type=float, default=None, help="report rounds needed to reach this test accuracy")
    ap.add_argument("--out", default=None, help="where to write runs.csv, summary.md and plots (the sweep folder)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    a = ap.parse_args(argv)
    try:
        res = report(Path(a.sweep), Path(a.out) if a.out else None, a.last_k, a.target, plots=not a.no_plots)
    except ReportError as e:
        print(f"fedagg-report: {e}", file=sys.stderr)
        return 2
    print(res["text"], end="")
    print("\nwrote " + ", ".join(str(p) for p in res["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
