"""fedagg-report on the virtual clock: time to a target accuracy (``--target``, simulated seconds), its paired
differences (``--paired-against``), accuracy against simulated time and the staleness histogram."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pandas as pd
import pytest
import yaml

from fedagg.report import summary as S
from fedagg.report.summary import main, report


def clock_run(folder, mode, seed, times, accs, applied=None, agg="fedavg", deadline=None):
    """A run folder written by hand: config.yaml, status.json, metrics.csv (``times``: its sim_time_s, None =
    a run without a device profile) and, with ``applied`` (staleness per applied update, per server update),
    rounds.jsonl's async records."""
    folder.mkdir(parents=True)
    cfg = {"aggregator": {"name": agg}, "server": {"mode": mode, "deadline_s": deadline}, "num_clients": 4,
           "seed": seed}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "status.json").write_text(json.dumps({"status": "completed"}))
    df = pd.DataFrame({"round": range(1, len(accs) + 1), "test_accuracy": accs})
    if times is not None:
        df["sim_time_s"] = times
    df.to_csv(folder / "metrics.csv", index=False)
    if applied is not None:
        (folder / "rounds.jsonl").write_text("".join(json.dumps(
            {"round": r + 1, "asked": [], "replied": [], "async": {"mode": mode, "applied": [
                {"client": i, "staleness": tau, "weight": 0.5} for i, tau in enumerate(taus)]}}) + "\n"
            for r, taus in enumerate(applied)))


@pytest.fixture
def clock_sweep(tmp_path):
    """sync FedAvg vs FedBuff on two seeds; target 0.6:
    sync seed 0 reaches it at round 3 = 6 s, sync seed 1 never; fedbuff seed 0 at round 2 = 2 s, seed 1 at
    round 3 = 4.5 s."""
    root = tmp_path / "clock"
    clock_run(root / "sync_0", "sync", 0, [2, 4, 6, 8], [0.2, 0.5, 0.7, 0.8])
    clock_run(root / "sync_1", "sync", 1, [3, 6, 9, 12], [0.1, 0.3, 0.4, 0.5])
    clock_run(root / "fedbuff_0", "fedbuff", 0, [1, 2, 3, 4], [0.3, 0.6, 0.65, 0.7],
              applied=[[0, 0], [0, 1], [1, 3], [0, 2]])
    clock_run(root / "fedbuff_1", "fedbuff", 1, [1.5, 3, 4.5, 6], [0.2, 0.4, 0.61, 0.7],
              applied=[[0, 0], [1, 1], [0, 2], [0, 0]])
    return root


def test_time_to_target_per_run_and_group(clock_sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(clock_sweep), "--target", "0.6", "--out", str(out), "--no-plots"]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    assert runs.loc["sync_0", "rounds_to_target"] == 3 and runs.loc["sync_0", "time_to_target_s"] == 6.0
    assert pd.isna(runs.loc["sync_1", "rounds_to_target"]) and pd.isna(runs.loc["sync_1", "time_to_target_s"])
    assert runs.loc["fedbuff_0", "time_to_target_s"] == 2.0 and runs.loc["fedbuff_1", "time_to_target_s"] == 4.5
    assert runs.loc["fedbuff_1", "rounds_to_target"] == 3  # 0.61 at round 3 (the 0.6 of round 2 is seed 0's)
    summ = pd.read_csv(out / "summary.csv").set_index("server.mode")
    fb, sy = summ.loc["fedbuff"], summ.loc["sync"]
    assert (fb["reached_target_time"], fb["with_sim_time"]) == (2, 2)
    assert fb["time_to_target_s_mean"] == pytest.approx(3.25)
    assert fb["time_to_target_s_std"] == pytest.approx(statistics.stdev([2.0, 4.5]))
    assert (sy["reached_target_time"], sy["time_to_target_s_mean"]) == (1, 6.0) and pd.isna(sy["time_to_target_s_std"])
    md = (out / "summary.md").read_text()
    assert "| rounds to 0.6 | sim s to 0.6 |" in md
    assert "| 2.5 ± 0.7 (2/2) | 3.25 ± 1.77 (2/2) |" in md  # fedbuff: rounds 2 and 3; 2 s and 4.5 s
    assert "| 3.0 (1/2) | 6.00 (1/2) |" in md  # sync: seed 1 never reached 0.6


def test_paired_time_to_target_only_over_seeds_where_both_reached(clock_sweep):
    res = report(clock_sweep, target=0.6, plots=False, paired_ref="fedavg@server.mode=sync", bootstrap=500)
    fb = res["summary"].set_index("server.mode").loc["fedbuff"]
    assert fb["paired_n"] == 2  # final accuracy pairs both seeds (server.* is a method key, not a setting)
    # final acc = mean of all 4 rounds (--last-k 5): seed 0 0.5625 − 0.55, seed 1 0.4775 − 0.325
    assert fb["paired_diff_mean"] == pytest.approx((0.0125 + 0.1525) / 2)
    # to the target: seed 1's sync run never reached it, so one pair: 2 s − 6 s, round 2 − round 3
    assert (fb["paired_time_n"], fb["paired_time_mean"]) == (1, pytest.approx(-4.0))
    assert (fb["paired_time_low"], fb["paired_time_high"]) == (pytest.approx(-4.0), pytest.approx(-4.0))
    assert (fb["paired_rounds_n"], fb["paired_rounds_mean"]) == (1, pytest.approx(-1.0))
    text = res["text"]
    assert "Δ sim s to 0.6 vs fedavg@server.mode=sync [95% CI]" in text
    assert "-4.00 [-4.00, -4.00] (n=1 of 2 pairs)" in text and "-1.0 [-1.0, -1.0] (n=1 of 2 pairs)" in text
    assert "| sync | 2 | 0 |" in text and "(reference)" in text


def test_paired_time_worked_bootstrap_and_no_pair_reached(tmp_path):
    """Three seeds where both reach the target, differences −1, −2, −3 s; a fourth rule that never does."""
    root = tmp_path / "p"
    for seed, (t_ref, t_new) in enumerate([(4.0, 3.0), (5.0, 3.0), (6.0, 3.0)]):
        clock_run(root / f"ref_{seed}", "sync", seed, [t_ref / 2, t_ref], [0.1, 0.9])
        clock_run(root / f"new_{seed}", "fedasync", seed, [t_new / 3, t_new], [0.2, 0.95])
        clock_run(root / f"slow_{seed}", "fedfix", seed, [10.0, 20.0], [0.1, 0.2])
    res = report(root, target=0.9, plots=False, paired_ref="fedavg@server.mode=sync", bootstrap=4000)
    s = res["summary"].set_index("server.mode")
    assert (s.loc["fedasync", "paired_time_n"], s.loc["fedasync", "paired_time_mean"]) == (3, pytest.approx(-2.0))
    lo, hi = S.paired_bootstrap_ci([-1.0, -2.0, -3.0], 4000, 0)  # the same seeded stream
    assert (s.loc["fedasync", "paired_time_low"], s.loc["fedasync", "paired_time_high"]) == (lo, hi)
    assert -3.0 <= lo < -2.0 < hi <= -1.0
    assert s.loc["fedfix", "paired_time_n"] == 0 and pd.isna(s.loc["fedfix", "paired_time_mean"])
    assert "— (0 of 3 pairs both reached)" in res["text"]
    assert "— (0/3)" in res["text"]  # fedfix's sim s to 0.9: never reached


def test_runs_without_clock_report_rounds_only(tmp_path):
    root = tmp_path / "noclock"
    for seed in (0, 1):
        clock_run(root / f"a_{seed}", "sync", seed, None, [0.2, 0.7], agg="fedavg")
        clock_run(root / f"b_{seed}", "sync", seed, None, [0.5, 0.8], agg="ida")
    res = report(root, target=0.6, plots=True, paired_ref="fedavg", bootstrap=200)
    assert "time_to_target_s" not in res["runs"].columns
    assert "sim s to" not in res["text"] and "Δ sim s" not in res["text"]
    ida = res["summary"].set_index("aggregator.name").loc["ida"]
    assert (ida["paired_rounds_n"], ida["paired_rounds_mean"]) == (2, pytest.approx(0.0))
    assert "accuracy_time" not in res["files"] and "staleness" not in res["files"]  # no clock, no async records
    # a sweep mixing clock and no-clock runs: the no-clock run's time is NaN, counted apart
    clock_run(root / "c_0", "sync", 0, [1.0, 2.0], [0.1, 0.65], agg="feddisco")
    res = report(root, target=0.6, plots=False)
    assert res["runs"].set_index("run").loc["c_0", "time_to_target_s"] == 2.0
    assert res["runs"]["time_to_target_s"].notna().sum() == 1
    assert "— (no sim_time_s)" in res["text"] and "| 2.00 (1/1) |" in res["text"]


def test_paired_against_a_mode_needs_the_group_named(clock_sweep, capsys):
    assert main([str(clock_sweep), "--paired-against", "fedavg", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedagg-report: --paired-against fedavg: the runs do not differ in aggregator.name")
    assert "fedavg@server.mode=sync" in err and "\n" not in err
    assert main([str(clock_sweep), "--paired-against", "fedprox@server.mode=sync", "--no-plots"]) == 2
    assert "no run has aggregator.name=fedprox" in capsys.readouterr().err


def test_sync_with_and_without_deadline_reference_named_by_null(tmp_path, capsys):
    """sync FedAvg with and without a deadline against FedBuff: the reference needs its deadline named."""
    root = tmp_path / "dl"
    for seed in (0, 1):
        clock_run(root / f"sync_{seed}", "sync", seed, [4, 8], [0.5, 0.9])
        clock_run(root / f"deadline_{seed}", "sync", seed, [2, 4], [0.5, 0.9 - 0.1 * seed], deadline=2.0)
        clock_run(root / f"fedbuff_{seed}", "fedbuff", seed, [1, 3 + seed], [0.4, 0.85])
    assert main([str(root), "--target", "0.8", "--paired-against", "fedavg@server.mode=sync", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert "several groups of fedavg@server.mode=sync" in err and "server.deadline_s" in err and "\n" not in err
    res = report(root, target=0.8, plots=False, paired_ref="fedavg@server.mode=sync,server.deadline_s=null",
                 bootstrap=300)
    s = res["summary"].set_index(["server.mode", "server.deadline_s"], drop=False)
    dl = s[s["server.deadline_s"] == 2.0].iloc[0]
    assert (dl["paired_time_n"], dl["paired_time_mean"]) == (2, pytest.approx(-4.0))  # 4 − 8 on both seeds
    fb = s[s["server.mode"] == "fedbuff"].iloc[0]
    assert (fb["paired_time_n"], fb["paired_time_mean"]) == (2, pytest.approx(((3 - 8) + (4 - 8)) / 2))
    assert res["text"].count("(reference)") == 3  # Δ final, Δ rounds, Δ sim s of the no-deadline sync group


def test_accuracy_against_time_is_a_step_mean_over_seeds(clock_sweep):
    runs_df, _, keys, curves, dirs, _ = S.build_tables(clock_sweep, 5, 0.6)
    groups = S._groups(runs_df, keys, dirs)
    stats = {label: (grid, mean, std) for label, _, grid, mean, std in S.time_curves(groups, runs_df, curves, dirs)}
    grid, mean, std = stats["server.mode=fedbuff (n=2)"]
    assert grid[-1] == 4.0 and grid[0] == 0.0  # up to the earlier end of the two seeds (4 s and 6 s)
    assert np.isnan(mean[grid < 1.0]).all()  # before any update
    only0 = (grid >= 1.0) & (grid < 1.5)
    assert np.allclose(mean[only0], 0.3)  # seed 0's round 1; seed 1 has no model scored yet
    both = (grid >= 2.0) & (grid < 3.0)  # seed 0: 0.6 (t=2), seed 1: 0.2 (t=1.5)
    assert np.allclose(mean[both], 0.4) and np.allclose(std[both], statistics.stdev([0.6, 0.2]))
    late = (grid >= 3.0) & (grid < 4.0)  # seed 0: 0.65 (t=3), seed 1: 0.4 (t=3)
    assert np.allclose(mean[late], 0.525)
    assert mean[-1] == pytest.approx(0.55)  # t = 4: seed 0's 0.7 at its 4th update, seed 1 still 0.4
    fig = S.accuracy_time_figure(groups, runs_df, curves, dirs)
    assert fig.axes[0].get_xlabel() == "simulated time (s)"
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["server.mode=fedbuff (n=2)", "server.mode=sync (n=2)"]


def test_staleness_histogram_from_applied_records(clock_sweep):
    runs_df, _, keys, _, dirs, _ = S.build_tables(clock_sweep, 5)
    fig = S.staleness_figure(S._groups(runs_df, keys, dirs), runs_df, dirs)
    panels = [a for a in fig.axes if a.patches]
    assert len(panels) == 1  # sync runs have no async records
    # pooled over both seeds: τ = 0 ×(4 + 5), 1 ×(2 + 2), 2 ×(1 + 1), 3 ×1: 16 applied updates, mean 11/16
    bars = sorted((p.get_x() + p.get_width() / 2, p.get_height()) for p in panels[0].patches)
    assert [x for x, _ in bars] == pytest.approx([0, 1, 2, 3])
    assert [h for _, h in bars] == pytest.approx([9 / 16, 4 / 16, 2 / 16, 1 / 16])
    assert "16 client updates applied, 2 run(s); mean 0.69, max 3" in panels[0].get_title()


# -- real runs on the virtual clock -----------------------------------------------------
@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """Two real 4-update runs on digits with a lognormal device profile, seed 0: sync FedAvg and FedBuff."""
    from fedagg_testing import compose

    from fedagg.experiment import run

    root = tmp_path_factory.mktemp("clock") / "sweep"
    for mode in ("sync", "fedbuff"):
        out = root / mode
        run(compose("dataset=digits", "model=mlp", "num_clients=4", "rounds=4", "device_profile=lognormal",
                    f"server.mode={mode}", "runtime=inprocess", "participation=full"), out)
        if not (out / "status.json").exists():  # the fedagg CLI writes it around run()
            (out / "status.json").write_text(json.dumps({"status": "completed"}))
    return root


def test_real_runs_time_to_target_paired_and_plots(real_sweep, tmp_path):
    m = {mode: pd.read_csv(real_sweep / mode / "metrics.csv") for mode in ("sync", "fedbuff")}
    target = min(float(d["test_accuracy"].max()) for d in m.values())  # both reach it
    first = {k: d[d["test_accuracy"] >= target].iloc[0] for k, d in m.items()}
    out = tmp_path / "rep"
    res = report(real_sweep, out, target=target, paired_ref="fedavg@server.mode=sync", bootstrap=200)
    runs = res["runs"].set_index("server.mode")
    for k in m:
        assert runs.loc[k, "time_to_target_s"] == float(first[k]["sim_time_s"])
        assert runs.loc[k, "rounds_to_target"] == int(first[k]["round"])
    fb = res["summary"].set_index("server.mode").loc["fedbuff"]
    assert fb["paired_time_n"] == 1
    assert fb["paired_time_mean"] == pytest.approx(float(first["fedbuff"]["sim_time_s"] - first["sync"]["sim_time_s"]))
    for name in ("report_accuracy.png", "report_accuracy_time.png", "report_staleness.png"):
        assert (out / name).stat().st_size > 1000, name
    # the histogram counts every applied update: Σ clients_replied, and Σ τ = Σ staleness_mean × replied
    counts = S.staleness_counts(real_sweep / "fedbuff")
    d = m["fedbuff"]
    assert sum(counts.values()) == int(d["clients_replied"].sum())
    assert sum(t * n for t, n in counts.items()) == pytest.approx(float((d["staleness_mean"] * d["clients_replied"]).sum()))


def test_report_on_an_async_run_folder_changes_none_of_its_files(real_sweep):
    run = real_sweep / "fedbuff"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main([str(run), "--target", "0.3"]) == 0
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {k: after[k] for k in before} == before
    new = {str(k) for k in set(after) - set(before)}
    assert new == {"runs.csv", "summary.csv", "summary.md", "report_accuracy.png", "report_accuracy_time.png",
                   "report_participation.png", "report_staleness.png"}  # (async weights are in async.applied)


def test_accuracy_at_fixed_simulated_times_and_its_pairs(tmp_path, capsys):
    """--at-time T: the last row at or before T (the model the server held at T); empty before the first row
    and for a run that stopped before T; paired over the seeds where both runs cover T. The arms differ in
    ``rounds`` (an update budget) and still pair by seed."""
    root = tmp_path / "at"
    # sync: rows at 2, 4, 6 s; fedasync: rows every 0.5 s up to 3 s (stops before 4 s)
    for seed, bump in ((0, 0.0), (1, 0.1)):
        clock_run(root / f"sync_{seed}", "sync", seed, [2, 4, 6], [0.3 + bump, 0.5 + bump, 0.7 + bump])
        clock_run(root / f"async_{seed}", "fedasync", seed, [0.5, 1, 1.5, 2, 2.5, 3],
                  [0.2, 0.4, 0.45, 0.6 - bump, 0.62, 0.64])
    for name, n in (("sync_0", 3), ("sync_1", 3), ("async_0", 6), ("async_1", 6)):  # different budgets
        cfg = yaml.safe_load((root / name / "config.yaml").read_text())
        (root / name / "config.yaml").write_text(yaml.safe_dump({**cfg, "rounds": n}))
    assert main([str(root), "--at-time", "1.9", "--at-time", "2", "--at-time", "4", "--no-plots",
                 "--paired-against", "fedavg@server.mode=sync"]) == 0
    out = capsys.readouterr().out
    runs = pd.read_csv(root / "runs.csv").set_index("run")
    assert pd.isna(runs.loc["sync_0", "acc_at_1.9s"])  # nothing scored before 2 s
    assert runs.loc["sync_0", "acc_at_2s"] == 0.3 and runs.loc["sync_1", "acc_at_4s"] == pytest.approx(0.6)
    assert runs.loc["async_0", "acc_at_1.9s"] == 0.45 and runs.loc["async_1", "acc_at_2s"] == pytest.approx(0.5)
    assert pd.isna(runs.loc["async_0", "acc_at_4s"])  # stopped at 3 s: 4 s is not covered
    s = pd.read_csv(root / "summary.csv").set_index("server.mode").loc["fedasync"]
    assert s["paired_n"] == 2  # rounds 6 vs 3: a method key, the runs pair by seed
    assert (s["paired_at_2s_n"], s["paired_at_2s_mean"]) == (2, pytest.approx(((0.6 - 0.3) + (0.5 - 0.4)) / 2))
    assert s["paired_at_1.9s_n"] == 0 and s["paired_at_4s_n"] == 0
    assert s["acc_at_1.9s_n"] == 2 and s["acc_at_1.9s_mean"] == pytest.approx(0.45)
    assert "| acc at 2 s | Δ acc at 2 s vs fedavg@server.mode=sync [95% CI] |" in out
    assert "+0.2000 [+0.1000, +0.3000] (n=2 of 2 pairs)" in out
    assert "— (0 of 2 pairs both cover 4 s)" in out and "— (0/2)" in out
    assert main([str(root), "--at-time", "0", "--no-plots"]) == 2
    assert capsys.readouterr().err.strip() == "fedagg-report: --at-time 0 must be > 0 simulated seconds"


def test_at_time_needs_runs_on_the_clock(tmp_path, capsys):
    root = tmp_path / "noclock"
    clock_run(root / "a_0", "sync", 0, None, [0.2, 0.7])
    assert main([str(root), "--at-time", "5", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--at-time 5: no run has sim_time_s" in err and "\n" not in err
