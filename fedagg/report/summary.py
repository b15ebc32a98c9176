"""``fedagg-report <sweep folder> [--last-k 5] [--target 0.6] [--at-time T ...] [--paired-against RULE] [--out DIR]``

Reads every run folder under a sweep (any depth; a run is a folder with
config.yaml, or with status.json for a job that failed before writing its
config) and writes into ``--out`` (default: the sweep folder):

* ``runs.csv``: one row per run: the swept keys, seed, status, final accuracy
  (mean of the last k rounds), best accuracy, the round at which test accuracy
  first reaches ``--target`` (empty if never) and, for runs on the virtual
  clock (a device profile: metrics.csv has ``sim_time_s``), that round's
  simulated seconds ``time_to_target_s`` (empty if never, or without the
  clock), with each ``--at-time T`` the test accuracy at simulated time T
  (``acc_at_<T>s``: the last row with ``sim_time_s`` <= T, the model the
  server held then; empty when nothing was scored by T or the run stopped
  before T), and for rules with one model per node (gossip) the final
  mean-node and worst-node accuracy;
* ``summary.csv`` / ``summary.md``: one row per group of runs that differ
  only in the seed: n completed, failed, mean ± sample std (ddof=1) over
  seeds; the Markdown table is printed to stdout too. summary.md also states
  the settings every run shares and the number of rounds the final accuracy
  really averages (k, or fewer when fewer rounds ran); with ``--target``,
  rounds and simulated seconds to it as mean ± std over the runs that
  reached it, with "reached / runs" (for seconds: / runs on the clock);
  with ``--at-time T``, the accuracy at T as mean ± std over the runs that
  cover T, with "covered / runs";
* with ``--paired-against RULE`` (an ``aggregator.name``): for every other
  group, the mean over seeds of (final accuracy − RULE's final accuracy),
  pairing the runs with the same seed and the same settings outside
  ``aggregator.*``, ``train.*``, ``server.*`` and ``rounds`` (so the same data,
  partition, participation, devices and initial model), with a paired
  bootstrap 95 % confidence interval (percentiles of the mean of
  ``--bootstrap`` resamples of the seed pairs, drawn from the named stream
  ``(--bootstrap-seed, "report-bootstrap")``); with ``--target`` also the
  paired differences of rounds and of simulated seconds to the target, over
  the pairs where both runs reached it ("n=2 of 5 pairs"), and with
  ``--at-time T`` the paired differences of the accuracy at T over the pairs
  where both runs cover T. ``rounds`` pairs like a method key: in the
  asynchronous modes it is an update budget, and arms with different budgets
  still run on the same data. When the rule is
  not swept (sync against asynchronous FedAvg), name the reference group:
  ``--paired-against fedavg@server.mode=sync``;
* ``report_accuracy.png`` (test accuracy vs round, mean ± std band per
  group, with a zoomed panel on the last rounds; the legend to the right of
  the axes, numbers in it rounded to 3 significant digits, or more where
  groups would look alike), ``report_participation.png`` (who replied in
  each round) and ``report_weights.png`` (aggregation weights per client
  and round, when the aggregator reported them; one colour scale for all
  panels): one panel per run -- a row per group, a column per seed;
* ``report_accuracy_time.png`` (runs with ``sim_time_s``): test accuracy
  against simulated seconds, each run faint and the group's mean ± std over
  seeds of the step function "accuracy of the last model scored by time t",
  up to the earliest end among the group's runs;
  ``report_staleness.png`` (asynchronous runs): per group, the share of
  applied client updates at each staleness (rounds.jsonl's
  ``async.applied``), pooled over its seeds.

Every file it writes has a name no fedagg run writes, so a report on a
single run folder adds files next to the run's own and changes none.

Swept keys are the config keys (nested keys flattened with dots) that take
two or more different values across the runs. Failed runs (status.json says
failed, or is missing, or has no metrics) are counted and shown, never
dropped.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ACC = "test_accuracy"
SIM_TIME = "sim_time_s"  # cumulative simulated seconds (runs with a device profile)
PLOTS = {"accuracy": "report_accuracy.png", "accuracy_time": "report_accuracy_time.png",
         "participation": "report_participation.png", "weights": "report_weights.png",
         "staleness": "report_staleness.png"}  # never a name a run writes (a run's own plot is accuracy.png)
NODE_COLS = ("node_accuracy_mean", "node_accuracy_worst")  # written for per-node rules (gossip)
EPS_S = 1e-9  # simulated-time comparisons allow the clock's rounding


def at_time_col(t: float) -> str:
    """runs.csv's column of ``--at-time t``: ``acc_at_30s``, ``acc_at_2.5s``."""
    return f"acc_at_{t:g}s"


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
def accuracy_at(df: Any, t: float) -> float | None:
    """Test accuracy at simulated time ``t``: the last row with ``sim_time_s`` <= t (the model the server
    held at t); None when the run has no clock, scored nothing by t, or stopped before t."""
    if SIM_TIME not in df.columns:
        return None
    times = df[SIM_TIME].astype(float)
    if not len(times) or not times.max() >= t - EPS_S:
        return None
    before = df[times <= t + EPS_S]
    return float(before[ACC].iloc[-1]) if len(before) else None


def run_stats(df: Any, last_k: int, target: float | None, at_times: tuple[float, ...] = ()) -> dict[str, Any]:
    acc = df[ACC].astype(float)
    k = max(1, min(int(last_k), len(acc)))
    first_hit: int | None = None
    time_hit: float | None = None
    if target is not None:
        hit = acc >= target
        reached = df.loc[hit, "round"]
        first_hit = int(reached.iloc[0]) if len(reached) else None
        if SIM_TIME in df.columns and len(reached):
            t = float(df.loc[hit, SIM_TIME].iloc[0])
            time_hit = t if math.isfinite(t) else None
    times = {"time_to_target_s": time_hit} if target is not None and SIM_TIME in df.columns else {}
    return {
        "rounds_done": int(df["round"].max()),
        "final_k": k,
        "final_accuracy": float(acc.iloc[-k:].mean()),
        "best_accuracy": float(acc.max()),
        "rounds_to_target": first_hit,
        **times,
        **{at_time_col(t): accuracy_at(df, t) for t in at_times},  # runs on the virtual clock: simulated seconds at that round (its metrics.csv sim_time_s)
        # rules with one model per node (gossip): the nodes' own accuracy, mean and worst node
        **{f"final_{c}": float(df[c].astype(float).iloc[-k:].mean()) for c in NODE_COLS if c in df.columns},
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


def _short(values: list[Any]) -> dict[Any, str]:
    """Each value as written in a label: a float to 3 significant digits, or
    to as many more as it takes to tell it from the key's other values."""
    floats = {v for v in values if isinstance(v, float) and math.isfinite(v)}
    out: dict[Any, str] = {}
    for v in values:
        if v not in floats:
            out[v] = str(v)
            continue
        for digits in range(3, 18):
            text = f"{v:.{digits}g}"
            if all(f"{u:.{digits}g}" != text for u in floats if u != v):
                break
        out[v] = text
    return out


def _label(keys: list[str], vals: tuple, short: list[dict[Any, str]] | None = None) -> str:
    """A group's name in legends and titles: a ``*.name`` key by its value
    alone (``fedau``), others as ``key=value`` (``short[i]``: how key i's
    values are written)."""
    if not keys:
        return "all runs"
    texts = [short[i].get(v, str(v)) if short else str(v) for i, v in enumerate(vals)]
    return ", ".join(t if k.endswith(".name") else f"{k}={t}" for k, t in zip(keys, texts))


def build_tables(root: Path, last_k: int = 5, target: float | None = None, at_times: tuple[float, ...] = ()):
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
        stats = run_stats(df, last_k, target, at_times) if (df is not None and status == "completed") else {
            "rounds_done": int(df["round"].max()) if df is not None else 0, "final_k": None,
            "final_accuracy": None, "best_accuracy": None, "rounds_to_target": None,
            **{at_time_col(t): None for t in at_times}}
        row.update(stats)
        rows.append(row)
    runs_df = pd.DataFrame(rows)
    if target is not None and any(m is not None and SIM_TIME in m.columns for m in metrics):
        runs_df["time_to_target_s"] = runs_df.get("time_to_target_s")  # NaN for runs without the clock
    for c in ("final_accuracy", "best_accuracy", "rounds_to_target", "time_to_target_s",
              *(f"final_{c}" for c in NODE_COLS), *(at_time_col(t) for t in at_times)):
        if c in runs_df.columns:
            runs_df[c] = pd.to_numeric(runs_df[c], errors="coerce")
    if target is not None:
        runs_df["rounds_to_target"] = runs_df["rounds_to_target"].astype("Int64")
    # groups in sorted order, seeds ascending inside; index labels keep pointing into `runs`
    key = runs_df[group_keys].map(str).agg("|".join, axis=1) if group_keys else pd.Series("", index=runs_df.index)
    seed = pd.to_numeric(runs_df["seed"], errors="coerce")
    runs_df = runs_df.loc[pd.DataFrame({"k": key, "s": seed}).sort_values(["k", "s"], kind="stable").index]

    curves_by_name = {row["run"]: m for row, m in zip(rows, metrics)}
    summary = []
    grouped = runs_df.groupby(group_keys, dropna=False, sort=False) if group_keys else [((), runs_df)]
    for vals, g in grouped:
        vals = vals if isinstance(vals, tuple) else (vals,)
        done = g[g["status"] == "completed"]
        s: dict[str, Any] = dict(zip(group_keys, vals))
        s["n"] = len(done)
        s["failed"] = int((g["status"] != "completed").sum())
        for c in ("final_accuracy", "best_accuracy", *(f"final_{c}" for c in NODE_COLS if f"final_{c}" in g)):
            s[f"{c}_mean"] = float(done[c].mean()) if len(done) else float("nan")
            s[f"{c}_std"] = float(done[c].std(ddof=1)) if len(done) > 1 else float("nan")
        if target is not None:
            hit = done["rounds_to_target"].dropna()
            s["reached_target"] = len(hit)
            s["rounds_to_target_mean"] = float(hit.mean()) if len(hit) else float("nan")
            s["rounds_to_target_std"] = float(hit.std(ddof=1)) if len(hit) > 1 else float("nan")
            if "time_to_target_s" in done:
                th = done["time_to_target_s"].dropna()
                s["reached_target_time"] = len(th)
                s["with_sim_time"] = int(done["run"].map(lambda r: _has_sim_time(curves_by_name.get(r))).sum())
                s["time_to_target_s_mean"] = float(th.mean()) if len(th) else float("nan")
                s["time_to_target_s_std"] = float(th.std(ddof=1)) if len(th) > 1 else float("nan")
        for t in at_times:  # accuracy at simulated time t, over the runs that cover t
            col = at_time_col(t)
            at = done[col].dropna()
            s[f"{col}_n"] = len(at)
            s[f"{col}_mean"] = float(at.mean()) if len(at) else float("nan")
            s[f"{col}_std"] = float(at.std(ddof=1)) if len(at) > 1 else float("nan")
        summary.append(s)
    summary_df = pd.DataFrame(summary)
    curves = {run: df for run, df in zip(runs, metrics)}
    return runs_df, summary_df, group_keys, curves, runs, configs


def _has_sim_time(df: Any) -> bool:
    return df is not None and SIM_TIME in df.columns and bool(df[SIM_TIME].notna().any())


def fixed_settings(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Flattened config keys every run has, with one value across all runs."""
    if not configs:
        return {}
    out: dict[str, Any] = {}
    for k, v in configs[0].items():
        if all(k in c and _hashable(c[k]) == _hashable(v) for c in configs[1:]):
            out[k] = v
    return out


def fixed_settings_markdown(fixed: dict[str, Any]) -> str:
    """One line per config section: ``- **train**: lr=0.05, epochs=1``."""
    sections: dict[str, list[str]] = {}
    for k, v in fixed.items():
        head, _, rest = k.partition(".")
        sec, name = (head, rest) if rest else ("run", head)
        sections.setdefault(sec, []).append(f"{name}={'null' if v is None else v}")
    order = ["run"] + [s for s in sections if s != "run"]
    return "".join(f"- **{sec}**: {', '.join(sections[sec])}\n" for sec in order if sec in sections)


# --------------------------------------------------------------------------- paired comparisons
RULE_KEY = "aggregator.name"
# keys that belong to a method, not to the setting it runs in: a rule's options, its local training
# (FedAU's preset gives each rule its own train.lr) and the server's schedule (server.mode sync | fedasync |
# fedbuff | fedfix, its deadline, concurrency, buffer, window, staleness weights); runs pair when everything
# else and the seed agree
# keys of the method, not of the data: runs that differ in them still pair. ``rounds`` is the server-update
# budget (in the asynchronous modes an update is a different amount of work: arms get different budgets)
METHOD_KEYS = ("aggregator.", "train.", "server.")
BUDGET_KEY = "rounds"


def is_method_key(key: str) -> bool:
    return key.startswith(METHOD_KEYS) or key == BUDGET_KEY
# time-based columns paired with --target: (runs.csv column, its name in summary.csv's paired_* columns)
TARGET_COLS = (("rounds_to_target", "rounds"), ("time_to_target_s", "time"))


def at_time_cols(columns: Any) -> list[tuple[str, str]]:
    """The ``--at-time`` columns among ``columns``, paired like TARGET_COLS: (acc_at_30s, at_30s)."""
    return [(c, c[len("acc_"):]) for c in columns if c.startswith("acc_at_") and c.endswith("s")]


def reference_spec(ref: str) -> tuple[str, dict[str, str]]:
    """``RULE`` or ``RULE@key=value,key=value`` (e.g. ``fedavg@aggregator.disco=false``: the
    reference is the runs of RULE whose swept ``key`` has ``value``): (rule, {key: value})."""
    rule, _, where = ref.partition("@")
    conds: dict[str, str] = {}
    for item in filter(None, where.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ReportError(f"--paired-against {ref}: '{item}' is not key=value (e.g. fedavg@aggregator.disco=false)")
        conds[key.strip()] = value.strip()
    return rule, conds


def _same_value(v: Any, want: str) -> bool:
    if str(v).lower() == want.lower():
        return True
    if want.lower() in ("null", "none"):  # an unset key (null in config.yaml; NaN once in a table)
        return v is None or (isinstance(v, float) and math.isnan(v))
    try:
        return float(v) == float(want)
    except (TypeError, ValueError):
        return False


def is_reference(row: Any, ref: str, fixed_rule: str | None = None) -> bool:
    """``row`` (a run or a group, with its swept keys) is the reference ``ref`` (:func:`reference_spec`);
    ``fixed_rule``: every run's ``aggregator.name`` when it is not swept (a sweep over ``server.mode``)."""
    rule, conds = reference_spec(ref)
    have = str(row[RULE_KEY]) if RULE_KEY in row else fixed_rule
    return have == rule and all(_same_value(row[k], v) for k, v in conds.items())


def paired_bootstrap_ci(diffs: Any, resamples: int = 10000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences: resample
    the pairs with replacement ``resamples`` times (named stream
    ``(seed, "report-bootstrap")``), take each resample's mean."""
    import numpy as np

    from ..seeding import rng

    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return float("nan"), float("nan")
    idx = rng(seed, "report-bootstrap").integers(0, d.size, size=(int(resamples), d.size))
    means = d[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def paired_against(runs_df: Any, group_keys: list[str], ref: str, resamples: int = 10000,
                   seed: int = 0, fixed_rule: str | None = None) -> dict[tuple, dict[str, Any]]:
    """For each group (tuple of its group-key values as str) that is not
    ``ref``: n pairs, mean of (final acc − ref's final acc) over seeds and its
    paired bootstrap 95 % CI. Runs pair when they share the seed and every
    group key outside ``aggregator.*``, ``train.*``, ``server.*`` and ``rounds`` (same
    data, partition, participation, devices, initial model); only completed
    runs pair. With ``--target`` (a ``rounds_to_target`` / ``time_to_target_s``
    column), the same for rounds and simulated seconds to the target, over the
    pairs where both runs reached it (``paired_{rounds,time}_n``).
    ``fixed_rule``: every run's rule when ``aggregator.name`` is not swept
    (then ``ref`` must name its group, e.g. ``fedavg@server.mode=sync``)."""
    import numpy as np

    rule, conds = reference_spec(ref)
    if RULE_KEY not in group_keys:
        if fixed_rule is None or not conds:
            raise ReportError(f"--paired-against {ref}: the runs do not differ in {RULE_KEY}; name the reference "
                              f"group with RULE@key=value (e.g. fedavg@server.mode=sync)")
        if fixed_rule != rule:
            raise ReportError(f"--paired-against {ref}: no run has {RULE_KEY}={rule} (found: {fixed_rule})")
    rules = set(runs_df[RULE_KEY].astype(str)) if RULE_KEY in group_keys else {str(fixed_rule)}
    if rule not in rules:
        raise ReportError(f"--paired-against {ref}: no run has {RULE_KEY}={rule} (found: {', '.join(sorted(rules))})")
    unswept = sorted(k for k in conds if k not in group_keys)
    if unswept:
        raise ReportError(f"--paired-against {ref}: {', '.join(unswept)} is not a swept key "
                          f"(swept: {', '.join(group_keys)})")
    match_keys = [k for k in group_keys if not is_method_key(k)]
    done = runs_df[runs_df["status"] == "completed"]
    refs = done[[is_reference(r, ref, fixed_rule) for _, r in done.iterrows()]] if len(done) else done
    ref_groups = refs.groupby(group_keys, dropna=False, sort=False).ngroups
    per_setting = refs.groupby(match_keys, dropna=False, sort=False).ngroups if match_keys else 1
    if ref_groups > per_setting:
        raise ReportError(
            f"--paired-against {ref}: several groups of {ref} share the same data settings (they differ in "
            f"{', '.join(k for k in group_keys if is_method_key(k) and k != RULE_KEY and k not in conds)}; "
            "name one with RULE@key=value); "
            "report them in separate sweeps")

    def setting(r: Any) -> tuple:
        return tuple(str(r[k]) for k in match_keys) + (str(r["seed"]),)

    def node_acc(r: Any, c: str) -> float:
        """A per-node rule's node accuracy; for a one-model rule every node holds the global model."""
        v = r.get(f"final_{c}")
        return float(r["final_accuracy"]) if v is None or math.isnan(float(v)) else float(v)

    ref_rows = {setting(r): r for _, r in refs.iterrows()}
    out: dict[tuple, dict[str, Any]] = {}
    for vals, g in runs_df.groupby(group_keys, dropna=False, sort=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        if is_reference(dict(zip(group_keys, vals)), ref, fixed_rule):
            continue
        pairs = [(r, ref_rows[setting(r)]) for _, r in g[g["status"] == "completed"].iterrows() if setting(r) in ref_rows]
        diffs = [float(r["final_accuracy"]) - float(q["final_accuracy"]) for r, q in pairs]
        lo, hi = paired_bootstrap_ci(diffs, resamples, seed)
        res: dict[str, Any] = {"paired_n": len(diffs), "paired_diff_mean": float(np.mean(diffs)) if diffs else float("nan"),
                               "paired_ci_low": lo, "paired_ci_high": hi}
        for c in NODE_COLS:  # per-node rules (gossip): the nodes' own accuracy against the reference's
            if pairs and all(not math.isnan(float(r.get(f"final_{c}", float("nan")))) for r, _ in pairs):
                d = [node_acc(r, c) - node_acc(q, c) for r, q in pairs]
                lo, hi = paired_bootstrap_ci(d, resamples, seed)
                res.update({f"paired_{c}_mean": float(np.mean(d)), f"paired_{c}_low": lo, f"paired_{c}_high": hi})
        for col, name in (*TARGET_COLS, *at_time_cols(runs_df.columns)):  # only the pairs where both have it
            if col not in runs_df.columns:
                continue
            both = [(float(r[col]), float(q[col])) for r, q in pairs if not (pd_isna(r[col]) or pd_isna(q[col]))]
            d = [a - b for a, b in both]
            lo, hi = paired_bootstrap_ci(d, resamples, seed)
            res.update({f"paired_{name}_n": len(d), f"paired_{name}_mean": float(np.mean(d)) if d else float("nan"),
                        f"paired_{name}_low": lo, f"paired_{name}_high": hi})
        out[tuple(str(v) for v in vals)] = res
    return out


def pd_isna(v: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def _fmt_target_diff(p: dict[str, Any], name: str, digits: int, both: str = "reached") -> str:
    """Δ rounds / seconds to the target: ``+1.50 [+0.00, +3.00] (n=2 of 3 pairs)``, n = pairs where both
    runs reached it (``both``: what both runs of a counted pair did, e.g. "cover 30 s")."""
    total, n = p.get("paired_n"), p.get(f"paired_{name}_n")
    if total is None or pd_isna(total) or int(total) == 0:
        return "— (no pairs)"
    if n is None or pd_isna(n) or int(n) == 0:
        return f"— (0 of {int(total)} pairs both {both})"
    mean, lo, hi = p[f"paired_{name}_mean"], p[f"paired_{name}_low"], p[f"paired_{name}_high"]
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] (n={int(n)} of {int(total)} pairs)"


def _fmt_diff(p: dict[str, Any], col: str = "diff") -> str:
    """``col``: "diff" (final accuracy) or a NODE_COLS entry."""
    n = p.get("paired_n")
    if n is None or math.isnan(float(n)) or int(n) == 0:
        return "— (no pairs)"
    mean, lo, hi = ((p["paired_diff_mean"], p["paired_ci_low"], p["paired_ci_high"]) if col == "diff" else
                    (p.get(f"paired_{col}_mean"), p.get(f"paired_{col}_low"), p.get(f"paired_{col}_high")))
    if mean is None or math.isnan(float(mean)):
        return "—"
    return f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}] (n={int(n)})"


def _k_label(ks: Any, last_k: int) -> str:
    """The number of rounds the final accuracy really averages: k, or fewer
    when fewer rounds ran ("3" or "3–5" when runs differ)."""
    ks = sorted({int(k) for k in ks if k is not None and not math.isnan(float(k))})
    if not ks:
        return str(last_k)
    return str(ks[0]) if len(ks) == 1 else f"{ks[0]}–{ks[-1]}"


def summary_markdown(summary_df: Any, group_keys: list[str], last_k: int, target: float | None,
                     k_label: str | None = None, paired_ref: str | None = None,
                     fixed_rule: str | None = None, at_times: tuple[float, ...] = ()) -> str:
    import pandas as pd

    def is_ref(s: Any) -> bool:
        return paired_ref is not None and is_reference(s, paired_ref, fixed_rule)

    table = []
    for _, s in summary_df.iterrows():
        r = {k: s[k] for k in group_keys}
        r["n"] = int(s["n"])
        r["failed"] = int(s["failed"])
        r[f"final acc (last {k_label or last_k})"] = _fmt(s["final_accuracy_mean"], s["final_accuracy_std"], r["n"])
        if paired_ref is not None:
            r[f"Δ final vs {paired_ref} [95% CI]"] = (
                "(reference)" if is_ref(s) else _fmt_diff(s.to_dict()))
        r["best acc"] = _fmt(s["best_accuracy_mean"], s["best_accuracy_std"], r["n"])
        for c, name in zip(NODE_COLS, ("mean", "worst")):
            if f"final_{c}_mean" in summary_df.columns:  # per-node rules; — for the others
                n_node = 0 if math.isnan(float(s[f"final_{c}_mean"])) else r["n"]
                r[f"node acc {name} (last {k_label or last_k})"] = _fmt(
                    s[f"final_{c}_mean"], s[f"final_{c}_std"], n_node)
                if paired_ref is not None and f"paired_{c}_mean" in summary_df.columns:
                    r[f"Δ node acc {name} vs {paired_ref} [95% CI]"] = (
                        "(reference)" if is_ref(s) else _fmt_diff(s.to_dict(), c))
        if target is not None:
            r[f"rounds to {target:g}"] = (
                f"{_fmt(s['rounds_to_target_mean'], s['rounds_to_target_std'], int(s['reached_target']), 1)}"
                f" ({int(s['reached_target'])}/{r['n']})"
            )
            if "time_to_target_s_mean" in summary_df.columns:  # runs on the virtual clock
                n_t, n_clock = int(s["reached_target_time"]), int(s["with_sim_time"])
                r[f"sim s to {target:g}"] = (
                    f"{_fmt(s['time_to_target_s_mean'], s['time_to_target_s_std'], n_t, 2)} ({n_t}/{n_clock})"
                    if n_clock else "— (no sim_time_s)")
            if paired_ref is not None:
                for col, name, unit, digits in (("rounds_to_target", "rounds", "rounds", 1),
                                                ("time_to_target_s", "time", "sim s", 2)):
                    if f"paired_{name}_n" in summary_df.columns:
                        r[f"Δ {unit} to {target:g} vs {paired_ref} [95% CI]"] = (
                            "(reference)" if is_ref(s) else _fmt_target_diff(s.to_dict(), name, digits))
        for t in at_times:
            col = at_time_col(t)
            n_at = int(s[f"{col}_n"])
            r[f"acc at {t:g} s"] = f"{_fmt(s[f'{col}_mean'], s[f'{col}_std'], n_at)} ({n_at}/{r['n']})"
            if paired_ref is not None and f"paired_{col[len('acc_'):]}_n" in summary_df.columns:
                r[f"Δ acc at {t:g} s vs {paired_ref} [95% CI]"] = (
                    "(reference)" if is_ref(s) else _fmt_target_diff(s.to_dict(), col[len("acc_"):], 4,
                                                                     f"cover {t:g} s"))
        table.append(r)
    df = pd.DataFrame(table)
    if not group_keys:
        df.insert(0, "group", "all runs")
    return _markdown(df)


# --------------------------------------------------------------------------- plots
def _groups(runs_df: Any, group_keys: list[str], run_dirs: list[Path]) -> list[tuple[str, list[int]]]:
    """(label, row indices) per group; floats in the labels to 3 significant
    digits, more only where two values of a key would look alike."""
    if not group_keys:
        return [("all runs", list(range(len(runs_df))))]
    groups = [(vals if isinstance(vals, tuple) else (vals,), list(g.index))
              for vals, g in runs_df.groupby(group_keys, dropna=False, sort=False)]
    short = [_short(list({vals[i] for vals, _ in groups})) for i in range(len(group_keys))]
    return [(_label(group_keys, vals, short), idx) for vals, idx in groups]


def accuracy_figure(groups, runs_df, curves, run_dirs) -> Any:
    """Mean ± std curves per group on the whole run (left) and zoomed on the
    last rounds (right, y-range fitted there); the legend sits outside the
    axes, to the right of the figure (saved with ``bbox_inches="tight"``), in
    columns of at most 25 entries. None when no completed run has metrics."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    stats = []
    for label, idx in groups:
        series = []
        for i in idx:
            df = curves[run_dirs[i]]
            if runs_df.loc[i, "status"] == "completed" and df is not None:
                series.append(df.set_index("round")[ACC].astype(float).rename(i))
        if series:
            m = pd.concat(series, axis=1)
            stats.append((f"{label} (n={len(series)})", m.mean(axis=1), m.std(axis=1, ddof=1).fillna(0.0)))
    if not stats:
        return None
    last = max(int(mean.index.max()) for _, mean, _ in stats)
    first = min(int(mean.index.min()) for _, mean, _ in stats)
    zoom_from = max(first, last - max(4, (last - first + 1) // 3) + 1)
    fig, (ax, zx) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    lo, hi = math.inf, -math.inf
    for label, mean, std in stats:
        line, = ax.plot(mean.index, mean.values, label=label)
        c = line.get_color()
        ax.fill_between(mean.index, (mean - std).values, (mean + std).values, alpha=0.2, color=c)
        z = mean.index >= zoom_from
        zx.plot(mean.index[z], mean.values[z], color=c, marker="." if z.sum() < 30 else None)
        zx.fill_between(mean.index[z], (mean - std).values[z], (mean + std).values[z], alpha=0.2, color=c)
        if z.any():
            lo, hi = min(lo, float((mean - std)[z].min())), max(hi, float((mean + std)[z].max()))
    if math.isfinite(lo):
        pad = max(0.005, 0.1 * (hi - lo))
        zx.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    zx.set_title(f"zoom: rounds {zoom_from}–{last}", fontsize=8)
    for a in (ax, zx):
        a.set_xlabel("round")
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.legend(*ax.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=7,
               ncol=math.ceil(len(stats) / LEGEND_ROWS), frameon=False)
    return fig


LEGEND_ROWS = 25


def plot_accuracy(path: Path, groups, runs_df, curves, run_dirs) -> Path | None:
    import matplotlib.pyplot as plt

    fig = accuracy_figure(groups, runs_df, curves, run_dirs)
    if fig is None:
        return None
    fig.savefig(path, bbox_inches="tight")  # the legend outside the axes is part of the image
    plt.close(fig)
    return path


TIME_GRID = 200  # points of the common time grid a group's mean ± std is taken on


def time_curves(groups, runs_df, curves, run_dirs) -> list[tuple[str, list[tuple[Any, Any]], Any, Any, Any]]:
    """Per group with runs on the virtual clock: (label, [(sim_time_s, accuracy) per completed run],
    grid, mean, std). A run's accuracy at time t is that of its last model scored at or before t (a step
    function; undefined before its first row); the grid runs from 0 to the earliest end among the group's
    runs, so every seed counts at every point of the mean (std with ddof=1, 0 for one run)."""
    import numpy as np

    out = []
    for label, idx in groups:
        runs = []
        for i in idx:
            df = curves[run_dirs[i]]
            if runs_df.loc[i, "status"] == "completed" and _has_sim_time(df):
                d = df[[SIM_TIME, ACC]].astype(float).dropna().sort_values(SIM_TIME, kind="stable")
                runs.append((d[SIM_TIME].to_numpy(), d[ACC].to_numpy()))
        if not runs:
            continue
        grid = np.linspace(0.0, min(float(t[-1]) for t, _ in runs), TIME_GRID)
        vals = np.full((len(runs), grid.size), np.nan)
        for j, (t, a) in enumerate(runs):
            k = np.searchsorted(t, grid, side="right") - 1  # the last row at or before each grid time
            vals[j, k >= 0] = a[k[k >= 0]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before the first update
            mean = np.nanmean(vals, axis=0)
            std = np.nanstd(vals, axis=0, ddof=1) if len(runs) > 1 else np.zeros(grid.size)
        out.append((f"{label} (n={len(runs)})", runs, grid, mean, np.nan_to_num(std)))
    return out


def accuracy_time_figure(groups, runs_df, curves, run_dirs) -> Any:
    """Test accuracy against simulated time (``sim_time_s``): each run faint, the group's mean ± std over
    seeds on :func:`time_curves`' grid as a step line with a band; legend right of the axes. None when no
    completed run has ``sim_time_s``."""
    import matplotlib.pyplot as plt

    stats = time_curves(groups, runs_df, curves, run_dirs)
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, runs, grid, mean, std in stats:
        line, = ax.plot(grid, mean, drawstyle="steps-post", label=label)
        c = line.get_color()
        ax.fill_between(grid, mean - std, mean + std, step="post", alpha=0.2, color=c)
        for t, a in runs:
            ax.plot(t, a, color=c, alpha=0.3, linewidth=0.8, drawstyle="steps-post", marker="." if t.size < 30 else None)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("runs faint; mean up to the earliest end of a group's runs", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(*ax.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=7,
               ncol=math.ceil(len(stats) / LEGEND_ROWS), frameon=False)
    return fig


def staleness_counts(run: Path) -> dict[int, int]:
    """{staleness: number of applied updates} of an asynchronous run (rounds.jsonl's ``async.applied``)."""
    counts: dict[int, int] = {}
    for d in load_rounds(run):
        for a in (d.get("async") or {}).get("applied") or []:
            if a.get("staleness") is not None:
                counts[int(a["staleness"])] = counts.get(int(a["staleness"]), 0) + 1
    return counts


def staleness_figure(groups, runs_df, run_dirs) -> Any:
    """Staleness of the applied updates, one histogram panel per group (its completed runs pooled): the
    share of updates at each staleness τ (server updates since the client's download; fresh = 0), with the
    count, mean and max in the title; one τ axis for all panels. None when no run is asynchronous."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    hists = []
    for label, idx in groups:
        pooled: dict[int, int] = {}
        runs = 0
        for i in idx:
            if runs_df.loc[i, "status"] != "completed":
                continue
            c = staleness_counts(run_dirs[i])
            runs += bool(c)
            for k, v in c.items():
                pooled[k] = pooled.get(k, 0) + v
        if pooled:
            hists.append((label, runs, pooled))
    if not hists:
        return None
    if len(hists) > MAX_GROUPS:
        print(f"warning: staleness plot shows the first {MAX_GROUPS} of {len(hists)} groups", file=sys.stderr)
        hists = hists[:MAX_GROUPS]
    ncols = min(4, len(hists))
    nrows = math.ceil(len(hists) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows + 0.4), dpi=100, squeeze=False,
                             sharex=True, layout="constrained")
    for ax in axes.flat[len(hists):]:
        ax.axis("off")
    for ax, (label, runs, pooled) in zip(axes.flat, hists):
        taus = np.array(sorted(pooled))
        n = np.array([pooled[t] for t in taus])
        total = int(n.sum())
        ax.bar(taus, n / total, width=0.8)
        mean = float((taus * n).sum() / total)
        ax.set_title(f"{label}\n{total} client updates applied, {runs} run(s); mean {mean:.2f}, max {int(taus.max())}",
                     fontsize=8)
        ax.set_xlabel("staleness τ (server updates)", fontsize=8)
        ax.set_ylabel("share of applied updates", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    return fig


def _save(path: Path, fig: Any) -> Path | None:
    import matplotlib.pyplot as plt

    if fig is None:
        return None
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _num_clients(run: Path, rounds: list[dict[str, Any]]) -> int:
    n = _load_config(run).get("num_clients")
    seen = [int(c) for d in rounds for key in ("asked", "replied", "weight_clients") for c in d.get(key, []) or []]
    cands = ([max(seen) + 1] if seen else []) + ([int(n)] if isinstance(n, int) else [])
    return max(cands) if cands else 0


def _heatmap(run: Path, kind: str) -> tuple[Any, list[int]] | None:
    """(client × round matrix, round numbers) of one run, or None."""
    import numpy as np

    rounds = load_rounds(run)
    if not rounds:
        return None
    if kind == "weights" and not any(d.get("weights") is not None and d.get("weight_clients") is not None
                                     for d in rounds):
        return None
    n = _num_clients(run, rounds)
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
    return mat, [int(d.get("round", j + 1)) for j, d in enumerate(rounds)]


MAX_GROUPS, MAX_SEEDS = 16, 10


def heatmap_figure(groups, runs_df, run_dirs, kind: str) -> Any:
    """kind='participation': 1 replied, 0.5 asked but no usable reply, 0 not
    asked. kind='weights': aggregation weight per client (blank = none), on
    one colour scale shared by every panel (the weights' range over all of
    them) with one labelled colorbar. One panel per run: a row per group, a
    column per seed; integer ticks."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    rows = []
    for label, idx in groups:
        panels = []
        for i in sorted(idx, key=lambda i: (_as_number(runs_df.loc[i, "seed"]), i)):
            hm = _heatmap(run_dirs[i], kind)
            if hm is not None:
                panels.append((f"{label}, seed {runs_df.loc[i, 'seed']}", *hm))
        if panels:
            rows.append(panels)
    if not rows:
        return None
    if len(rows) > MAX_GROUPS:
        print(f"warning: {kind} plot shows the first {MAX_GROUPS} of {len(rows)} groups", file=sys.stderr)
        rows = rows[:MAX_GROUPS]
    if any(len(r) > MAX_SEEDS for r in rows):
        print(f"warning: {kind} plot shows the first {MAX_SEEDS} seeds of each group", file=sys.stderr)
        rows = [r[:MAX_SEEDS] for r in rows]
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(4.2 * ncols + 0.6, 2.4 * len(rows) + 0.5), dpi=100,
                             squeeze=False, layout="constrained")
    norm = Normalize(0.0, 1.0)
    if kind == "weights":
        finite = np.concatenate([m[np.isfinite(m)] for r in rows for _, m, _ in r])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            norm = Normalize(lo, hi if hi > lo else lo + 1e-12)
    im = None
    for r, panels in enumerate(rows):
        for ax in axes[r, len(panels):]:
            ax.axis("off")
        for ax, (title, mat, rnds) in zip(axes[r], panels):
            extent = (rnds[0] - 0.5, rnds[-1] + 0.5, mat.shape[0] - 0.5, -0.5)
            if kind == "participation":
                ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1, extent=extent)
            else:
                im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", interpolation="nearest", cmap="viridis",
                               norm=norm, extent=extent)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("round", fontsize=8)
            ax.set_ylabel("client", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
    if im is not None:  # one scale for the whole figure
        fig.colorbar(im, ax=axes, label="aggregation weight", shrink=0.9, aspect=40)
    fig.suptitle("replied (black), asked but no reply (grey)" if kind == "participation"
                 else "aggregation weight per client (blank = not aggregated)", fontsize=9)
    return fig


def _as_number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def plot_heatmaps(path: Path, groups, runs_df, run_dirs, kind: str) -> Path | None:
    import matplotlib.pyplot as plt

    fig = heatmap_figure(groups, runs_df, run_dirs, kind)
    if fig is None:
        return None
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- entry
def report(root: Path, out: Path | None = None, last_k: int = 5, target: float | None = None,
           plots: bool = True, paired_ref: str | None = None, bootstrap: int = 10000,
           bootstrap_seed: int = 0, at_times: Sequence[float] = ()) -> dict[str, Any]:
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder")
    if last_k < 1:
        raise ReportError(f"--last-k {last_k} must be >= 1")
    if bootstrap < 1:
        raise ReportError(f"--bootstrap {bootstrap} must be >= 1")
    bad = [t for t in at_times if not (math.isfinite(t) and t > 0)]
    if bad:
        raise ReportError(f"--at-time {bad[0]:g} must be > 0 simulated seconds")
    times = tuple(sorted(set(float(t) for t in at_times)))
    out = Path(out) if out is not None else root
    runs_df, summary_df, group_keys, curves, run_dirs, configs = build_tables(root, last_k, target, times)
    if times and not any(_has_sim_time(m) for m in curves.values()):
        raise ReportError(f"--at-time {times[0]:g}: no run has sim_time_s (the virtual clock needs a device_profile)")
    fixed_rule = fixed_settings(configs).get(RULE_KEY)
    fixed_rule = None if fixed_rule is None else str(fixed_rule)
    paired_note = ""
    if paired_ref is not None:
        pairs = paired_against(runs_df, group_keys, paired_ref, bootstrap, bootstrap_seed, fixed_rule)
        cols = ["paired_n", "paired_diff_mean", "paired_ci_low", "paired_ci_high"]
        cols += sorted({c for p in pairs.values() for c in p if c not in cols})  # per-node Δ, where any
        for col in cols:
            summary_df[col] = [pairs.get(tuple(str(r[k]) for k in group_keys), {}).get(col)
                               for _, r in summary_df.iterrows()]
        paired_note = (f" Δ = mean over seeds of (final acc − {paired_ref}'s final acc), runs paired by seed and "
                       f"data settings; [95% CI] = paired bootstrap ({bootstrap} resamples, seed {bootstrap_seed})"
                       + ("; Δ node acc: a per-node rule's node accuracy minus the reference's (a one-model "
                          "rule's nodes all hold its global model)." if any(
                              c.startswith("paired_node") for c in summary_df.columns) else ".")
                       + (f" Δ {'rounds / sim s' if 'time_to_target_s' in runs_df.columns else 'rounds'} to "
                          f"{target:g}: the method's minus the reference's, over the pairs where both reached the "
                          "target (n of the pairs)." if target is not None else "")
                       + (" Δ acc at T s: the method's accuracy at simulated time T minus the reference's, over "
                          "the pairs where both runs cover T (n of the pairs)." if times else ""))
    out.mkdir(parents=True, exist_ok=True)
    runs_df.to_csv(out / "runs.csv", index=False)
    summary_df.to_csv(out / "summary.csv", index=False)
    k_label = _k_label(runs_df["final_k"], last_k)
    md = summary_markdown(summary_df, group_keys, last_k, target, k_label, paired_ref, fixed_rule, times)
    n_failed = int((runs_df["status"] != "completed").sum())
    fewer = f" (--last-k {last_k}; fewer rounds ran)" if k_label != str(last_k) else ""
    fixed = fixed_settings_markdown({k: v for k, v in fixed_settings(configs).items() if k != "seed"})
    at_note = (" acc at T s = test accuracy of the last update or round scored by simulated time T, over the "
               "runs that ran to T (covered/runs)." if times else "")
    head = (f"# Sweep {root}\n\n{len(runs_df)} runs, {n_failed} failed; grouped by "
            f"{', '.join(group_keys) or '(nothing differs but the seed)'}; mean ± sample std over seeds; "
            f"final acc = mean test accuracy of the last {k_label} rounds{fewer}.{at_note}{paired_note}\n\n"
            + (f"Settings shared by every run:\n\n{fixed}\n" if fixed else ""))
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
                         ("accuracy_time", lambda p: _save(p, accuracy_time_figure(groups, runs_df, curves,
                                                                                     run_dirs))),
                         ("participation", lambda p: plot_heatmaps(p, groups, runs_df, run_dirs, "participation")),
                         ("weights", lambda p: plot_heatmaps(p, groups, runs_df, run_dirs, "weights")),
                         ("staleness", lambda p: _save(p, staleness_figure(groups, runs_df, run_dirs)))):
            p = fn(out / PLOTS[name])
            if p is not None:
                files[name] = p
    return {"runs": runs_df, "summary": summary_df, "group_keys": group_keys, "markdown": md,
            "text": head + md + tail, "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedagg-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="a sweep folder (e.g. multirun/<date>/<time>) or a single run folder")
    ap.add_argument("--last-k", type=int, default=5, help="final accuracy = mean of the last k rounds (5)")
    ap.add_argument("--target", type=float, default=None, metavar="ACC",
                    help="report the round, and for runs with a device profile the simulated seconds (sim_time_s), "
                         "at which test accuracy first reaches ACC (not reached: empty / —)")
    ap.add_argument("--at-time", type=float, action="append", default=[], metavar="T",
                    help="(repeatable) each run's test accuracy at simulated time T seconds: the last metrics.csv "
                         "row with sim_time_s <= T (empty when nothing was scored by T or the run stopped before "
                         "T); with --paired-against also paired differences over the pairs where both cover T")
    ap.add_argument("--out", default=None, help="where to write runs.csv, summary.md and plots (the sweep folder)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--paired-against", default=None, metavar="RULE",
                    help="an aggregator.name: report each other group's mean paired difference in final accuracy "
                         "to it over seeds (runs pair by seed and every swept key outside aggregator.*, train.*, "
                         "server.* and rounds), with a paired bootstrap 95%% CI; with --target also in rounds and simulated "
                         "seconds to the target, over the pairs where both reached it; RULE@key=value,... picks one "
                         "group of that rule (e.g. fedavg@aggregator.disco=false, fedavg@server.mode=sync)")
    ap.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the CI (10000)")
    ap.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap's named stream (0)")
    a = ap.parse_args(argv)
    try:
        res = report(Path(a.sweep), Path(a.out) if a.out else None, a.last_k, a.target, plots=not a.no_plots,
                     paired_ref=a.paired_against, bootstrap=a.bootstrap, bootstrap_seed=a.bootstrap_seed,
                     at_times=a.at_time)
    except ReportError as e:
        print(f"fedagg-report: {e}", file=sys.stderr)
        return 2
    print(res["text"], end="")
    print("\nwrote " + ", ".join(str(p) for p in res["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
