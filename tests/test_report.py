"""fedagg-report on synthetic sweep folders with known numbers."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from fedagg_testing import ROOT

from fedagg.report.summary import main, report


def fake_run(folder, agg, seed, accs, status="completed", extra_cols=None, rounds_jsonl=None, alpha=0.3):
    folder.mkdir(parents=True)
    cfg = {"aggregator": {"name": agg, "server_lr": 1.0}, "partition": {"name": "dirichlet", "alpha": alpha},
           "num_clients": 4, "rounds": 4, "seed": seed}
    if agg == "fedau":
        cfg["aggregator"]["K"] = None  # a key only one aggregator has is not a swept key
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    if status is not None:
        st = {"status": status}
        if status == "failed":
            st["error"] = "RuntimeError: boom"
        (folder / "status.json").write_text(json.dumps(st))
    if accs:
        df = pd.DataFrame({"round": range(1, len(accs) + 1), "clients_asked": 4, "clients_replied": 4,
                           "train_loss": 1.0, "test_accuracy": accs, "test_loss": 1.0})
        for c in extra_cols or []:
            df[c] = 0.5
        df.to_csv(folder / "metrics.csv", index=False)
    if rounds_jsonl:
        (folder / "rounds.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rounds_jsonl))


ACCS = {  # (aggregator, seed) -> accuracy per round
    ("fedavg", 0): [0.1, 0.2, 0.3, 0.4],
    ("fedavg", 1): [0.1, 0.3, 0.5, 0.6],
    ("fedavg", 2): [0.2, 0.2, 0.4, 0.8],
    ("fedau", 0): [0.3, 0.5, 0.7, 0.9],
    ("fedau", 1): [0.2, 0.4, 0.6, 0.7],
}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    rounds = [{"round": r, "asked": [0, 1, 2], "replied": [0, 1], "failed": {"2": "x"}, "rejected": {},
               "weight_clients": [0, 1], "weights": [0.7, 0.3]} for r in range(1, 5)]
    for i, ((agg, seed), accs) in enumerate(ACCS.items()):
        # any depth: fedau runs sit one level deeper
        sub = root / ("deep" if agg == "fedau" else "") / f"{i}_aggregator={agg},seed={seed}"
        fake_run(sub, agg, seed, accs, rounds_jsonl=rounds if agg == "fedau" else None,
                 extra_cols=["omega_sum_over_N"] if agg == "fedau" else None)
        (sub / ".hydra").mkdir()  # Hydra's own copy must not count as a run
        (sub / ".hydra" / "config.yaml").write_text("seed: 99\n")
    fake_run(root / "9_aggregator=fedau,seed=2", "fedau", 2, [0.1, 0.1], status="failed")
    return root


def test_report_means_and_sample_std(sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(sweep), "--last-k", "2", "--target", "0.6", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6
    assert "aggregator.name" in runs.columns and "seed" in runs.columns
    assert "aggregator.K" not in runs.columns and "partition.alpha" not in runs.columns
    fa = runs[runs["aggregator.name"] == "fedavg"].sort_values("seed")
    assert fa["final_accuracy"].tolist() == pytest.approx([0.35, 0.55, 0.6], abs=1e-12)
    assert fa["best_accuracy"].tolist() == pytest.approx([0.4, 0.6, 0.8], abs=1e-12)
    assert fa["rounds_to_target"].fillna(-1).tolist() == [-1, 4, 4]

    summ = pd.read_csv(out / "summary.csv").set_index("aggregator.name")
    assert summ.loc["fedavg", "n"] == 3 and summ.loc["fedavg", "failed"] == 0
    assert summ.loc["fedavg", "final_accuracy_mean"] == pytest.approx(statistics.mean([0.35, 0.55, 0.6]), abs=1e-12)
    assert summ.loc["fedavg", "final_accuracy_std"] == pytest.approx(statistics.stdev([0.35, 0.55, 0.6]), abs=1e-12)
    assert summ.loc["fedau", "n"] == 2 and summ.loc["fedau", "failed"] == 1
    assert summ.loc["fedau", "final_accuracy_mean"] == pytest.approx(0.725, abs=1e-12)
    assert summ.loc["fedau", "final_accuracy_std"] == pytest.approx(statistics.stdev([0.8, 0.65]), abs=1e-12)
    assert summ.loc["fedau", "reached_target"] == 2

    md = (out / "summary.md").read_text()
    assert "| fedavg | 3 | 0 | 0.5000 ± 0.1323 |" in md
    assert "| fedau | 2 | 1 | 0.7250 ± 0.1061 |" in md
    assert "RuntimeError: boom" in md  # the failed run is listed, not dropped
    assert "| fedavg | 3 | 0 |" in printed.out  # table printed to stdout too
    assert "different metric columns" in printed.err and "omega_sum_over_N" in printed.err
    for png in ("report_accuracy.png", "report_participation.png", "report_weights.png"):
        assert (out / png).stat().st_size > 1000, png


def test_report_writes_into_sweep_folder_by_default(sweep, capsys):
    assert main([str(sweep), "--no-plots"]) == 0
    assert (sweep / "runs.csv").exists() and (sweep / "summary.md").exists()
    runs = pd.read_csv(sweep / "runs.csv")
    assert runs["rounds_to_target"].isna().all()  # no --target: empty column


def test_failed_and_missing_status_are_failed(tmp_path, capsys):
    root = tmp_path / "s"
    fake_run(root / "a", "fedavg", 0, [0.5, 0.6])
    fake_run(root / "b", "fedavg", 1, [0.5], status="failed")
    fake_run(root / "c", "fedavg", 2, [0.5, 0.7], status=None)  # killed: no status.json
    fake_run(root / "d", "fedavg", 3, [], status="completed")  # claims completed, no metrics
    res = report(root, plots=False)
    runs = res["runs"].set_index("run")
    assert runs.loc["a", "status"] == "completed"
    assert (runs.loc[["b", "c", "d"], "status"] == "failed").all()
    assert "status.json" in runs.loc["c", "error"]
    s = res["summary"].iloc[0]
    assert s["n"] == 1 and s["failed"] == 3
    assert s["final_accuracy_mean"] == pytest.approx(0.55)
    assert "| all runs | 1 | 3 | 0.5500 |" in res["markdown"]


def test_only_failed_runs_still_reported(tmp_path, capsys):
    fake_run(tmp_path / "x", "fedavg", 0, [], status="failed")
    assert main([str(tmp_path), "--no-plots"]) == 0
    assert "| all runs | 0 | 1 | — |" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, make):
    p = tmp_path / "sweep"
    if make == "empty":
        (p / "sub").mkdir(parents=True)
    elif make == "file":
        p.write_text("x")
    assert main([str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedagg-report: ") and "\n" not in err
    assert ("no runs" in err) if make == "empty" else ("does not exist" in err or "not a folder" in err)


def test_module_entry_point_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fedagg.report", str(tmp_path / "nope")],
                       check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "does not exist" in p.stderr


# -- paired comparisons, the true last-k, fixed settings, figures -----------------------
FINAL = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.70, 4: 0.65}  # fedavg's final accuracy per seed
GAIN = {0: 0.01, 1: 0.02, 2: 0.03, 3: 0.04, 4: 0.05}  # feddisco − fedavg, per seed


@pytest.fixture
def paired_sweep(tmp_path):
    """Two data settings (α) × three rules × five seeds; with --last-k 1 the
    final accuracy is the last round's. ida has no seed-4 run and a failed seed 3."""
    root = tmp_path / "paired"
    for alpha, shift in ((0.1, 0.0), (0.5, 0.1)):
        for seed, base in FINAL.items():
            fake_run(root / f"a{alpha}_fedavg_{seed}", "fedavg", seed, [0.1, base + shift], alpha=alpha)
            fake_run(root / f"a{alpha}_feddisco_{seed}", "feddisco", seed, [0.1, base + shift + GAIN[seed]],
                     alpha=alpha)
            if seed < 4:
                fake_run(root / f"a{alpha}_ida_{seed}", "ida", seed, [0.1, base + shift - 0.02],
                         status="failed" if seed == 3 else "completed", alpha=alpha)
    return root


def test_paired_differences_with_bootstrap_ci(paired_sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(paired_sweep), "--last-k", "1", "--paired-against", "fedavg", "--out", str(out),
                 "--no-plots"]) == 0
    summ = pd.read_csv(out / "summary.csv").set_index(["aggregator.name", "partition.alpha"])
    for alpha in (0.1, 0.5):  # the α shift cancels: pairs share the data setting
        d = summ.loc[("feddisco", alpha)]
        assert d["paired_n"] == 5 and d["paired_diff_mean"] == pytest.approx(0.03, abs=1e-12)
        assert 0.01 <= d["paired_ci_low"] < 0.03 < d["paired_ci_high"] <= 0.05  # within the range of the diffs
        i = summ.loc[("ida", alpha)]  # seeds 0-2 pair (3 failed, 4 missing): a constant −0.02 -> CI collapses
        assert i["paired_n"] == 3
        assert (i["paired_diff_mean"], i["paired_ci_low"], i["paired_ci_high"]) == pytest.approx((-0.02,) * 3)
        assert pd.isna(summ.loc[("fedavg", alpha), "paired_diff_mean"])
    md = (out / "summary.md").read_text()
    assert "Δ final vs fedavg [95% CI]" in md and "(reference)" in md
    assert "| ida | 0.1 | 3 | 1 |" in md and "-0.0200 [-0.0200, -0.0200] (n=3)" in md
    again = report(paired_sweep, tmp_path / "rep2", last_k=1, plots=False, paired_ref="fedavg")
    assert again["summary"]["paired_ci_low"].equals(summ.reset_index()["paired_ci_low"])  # seeded


def test_paired_bootstrap_ci_worked_case():
    from fedagg.report.summary import paired_bootstrap_ci

    # two pairs with differences 0 and 1: a resample's mean is 0, ½ or 1 with
    # probabilities ¼, ½, ¼, so the 2.5 % and 97.5 % percentiles are 0 and 1
    assert paired_bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    lo, hi = paired_bootstrap_ci([0.01, 0.02, 0.03, 0.04, 0.05], resamples=20000, seed=3)
    assert lo == pytest.approx(0.018, abs=0.002) and hi == pytest.approx(0.042, abs=0.002)  # ≈ ±1.96·σ/√n
    assert paired_bootstrap_ci([0.2]) == (0.2, 0.2)


def test_paired_against_unknown_rule_is_one_line_exit_2(paired_sweep, capsys):
    assert main([str(paired_sweep), "--paired-against", "fedprox", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedagg-report: --paired-against fedprox: no run") and "\n" not in err


def test_summary_states_true_last_k_and_fixed_settings(tmp_path, capsys):
    root = tmp_path / "short"
    for seed in (0, 1):
        fake_run(root / f"fedavg_{seed}", "fedavg", seed, [0.1, 0.2, 0.3])  # only 3 rounds ran
    res = report(root, last_k=5, plots=False)
    text = res["text"]
    assert "last 3 rounds (--last-k 5; fewer rounds ran)" in text and "final acc (last 3)" in text
    assert "last 5" not in text
    assert "- **run**: num_clients=4, rounds=4" in text
    assert "- **aggregator**: name=fedavg, server_lr=1.0" in text
    assert "- **partition**: alpha=0.3, name=dirichlet" in text
    assert res["summary"].iloc[0]["final_accuracy_mean"] == pytest.approx(0.2)


def test_figures_legend_outside_integer_ticks_every_seed(sweep):
    import matplotlib

    matplotlib.use("Agg")
    from fedagg.report import summary as S

    runs_df, _, keys, curves, dirs, _ = S.build_tables(sweep, 2)
    groups = S._groups(runs_df, keys, dirs)
    fig = S.accuracy_figure(groups, runs_df, curves, dirs)
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = fig.legends[0].get_window_extent()
    assert not leg.overlaps(ax.get_window_extent())  # the legend covers no curve
    assert all(float(t).is_integer() for t in ax.get_xticks())
    # participation: fedau's two completed seeds and its failed one have rounds.jsonl? only 0 and 1 do
    fig = S.heatmap_figure(groups, runs_df, dirs, "participation")
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == ["fedau, seed 0", "fedau, seed 1"]  # every seed, not seed 0 only
    for a in fig.axes:
        if a.get_title():
            assert all(float(t).is_integer() for t in a.get_xticks())
            assert all(float(t).is_integer() for t in a.get_yticks())


def test_gossip_node_accuracy_columns(tmp_path):
    root = tmp_path / "g"
    for seed, (mean, worst) in enumerate([(0.6, 0.4), (0.8, 0.5)]):
        fake_run(root / f"gossip_{seed}", "gossip", seed, [0.5, 0.7], extra_cols=[])
        m = pd.read_csv(root / f"gossip_{seed}" / "metrics.csv")
        m["node_accuracy_mean"], m["node_accuracy_worst"] = [0.1, mean], [0.0, worst]
        m.to_csv(root / f"gossip_{seed}" / "metrics.csv", index=False)
        fake_run(root / f"fedavg_{seed}", "fedavg", seed, [0.5, 0.7])
    res = report(root, last_k=1, plots=False)
    s = res["summary"].set_index("aggregator.name")
    assert s.loc["gossip", "final_node_accuracy_mean_mean"] == pytest.approx(0.7)
    assert s.loc["gossip", "final_node_accuracy_worst_mean"] == pytest.approx(0.45)
    assert "| gossip | 2 | 0 | 0.7000 ± 0.0000 | 0.7000 ± 0.0000 | 0.7000 ± 0.1414 | 0.4500 ± 0.0707 |" in res["markdown"]
    assert "node acc worst (last 1)" in res["markdown"] and "| fedavg | 2 | 0 | 0.7000 ± 0.0000 | 0.7000 ± 0.0000 | — | — |" in res["markdown"]


def test_paired_node_accuracy_of_a_per_node_rule(tmp_path):
    """gossip's nodes against FedAvg's: every FedAvg node holds the global model, so its node accuracy is its
    test accuracy; gossip's own mean/worst node accuracy (here 0.5 every round) is paired with it by seed."""
    root = tmp_path / "g"
    for seed in (0, 1, 2):
        fake_run(root / f"fedavg_{seed}", "fedavg", seed, ACCS[("fedavg", seed)])  # final (last 1): 0.4, 0.6, 0.8
        fake_run(root / f"gossip_{seed}", "gossip", seed, [0.1, 0.2, 0.3, 0.3],
                 extra_cols=["node_accuracy_mean", "node_accuracy_worst"])
    res = report(root, last_k=1, plots=False, paired_ref="fedavg", bootstrap=2000)
    g = res["summary"].set_index("aggregator.name").loc["gossip"]
    assert g["paired_diff_mean"] == pytest.approx(0.3 - 0.6)
    assert g["paired_node_accuracy_mean_mean"] == pytest.approx(-0.1)  # (0.1 - 0.1 - 0.3) / 3
    assert g["paired_node_accuracy_worst_mean"] == pytest.approx(-0.1)
    assert g["paired_node_accuracy_mean_low"] >= -0.3 - 1e-12 and g["paired_node_accuracy_mean_high"] <= 0.1 + 1e-12
    assert "Δ node acc mean vs fedavg [95% CI]" in res["text"] and "-0.1000 [" in res["text"]


def test_pairing_ignores_method_keys_such_as_a_rules_own_learning_rate(tmp_path):
    """FedAU's preset gives each rule its own train.lr: runs still pair by seed and data settings."""
    root = tmp_path / "lr"
    for rule, lr, accs in (("avg_participating", 0.0562, [0.5, 0.6]), ("fedau", 0.1, [0.6, 0.8])):
        for seed, a in enumerate(accs):
            fake_run(root / f"{rule}_{seed}", rule, seed, [0.1, a])
            cfg = yaml.safe_load((root / f"{rule}_{seed}" / "config.yaml").read_text())
            cfg["train"] = {"lr": lr}
            (root / f"{rule}_{seed}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = report(root, last_k=1, plots=False, paired_ref="avg_participating", bootstrap=1000)
    f = res["summary"].set_index("aggregator.name").loc["fedau"]
    assert f["paired_n"] == 2 and f["paired_diff_mean"] == pytest.approx(0.15)


# -- a report on a run folder, legends a reader can use, one colour scale ----------------
@pytest.fixture(scope="module")
def gossip_run(tmp_path_factory):
    """A real 2-round gossip run (one model per node) on the small preset."""
    from fedagg_testing import compose

    from fedagg.experiment import run

    out = tmp_path_factory.mktemp("gossip") / "run"
    run(compose("+experiment=small", "aggregator=gossip", "rounds=2"), out)
    if not (out / "status.json").exists():  # the fedagg CLI writes it around run()
        (out / "status.json").write_text(json.dumps({"status": "completed"}))
    return out


def test_report_on_a_run_folder_changes_none_of_its_files(gossip_run):
    """fedagg-report <run dir> writes next to the run's own files (its
    accuracy.png, metrics.csv, ...) and leaves every one of them as it was."""
    before = {p.relative_to(gossip_run): p.read_bytes() for p in gossip_run.rglob("*") if p.is_file()}
    assert "accuracy.png" in {str(k) for k in before}
    assert main([str(gossip_run), "--last-k", "1"]) == 0
    after = {p.relative_to(gossip_run): p.read_bytes() for p in gossip_run.rglob("*") if p.is_file()}
    assert {k: after[k] for k in before} == before  # nothing the run wrote was overwritten
    new = {str(k) for k in set(after) - set(before)}
    assert new == {"runs.csv", "summary.csv", "summary.md", "report_accuracy.png",
                   "report_participation.png"}  # (gossip reports no aggregation weights: no weights plot)


def test_gossip_plot_draws_node_accuracies_and_names_topology_and_vc(gossip_run):
    from fedagg.report.metrics import accuracy_figure, run_title

    cfg = yaml.safe_load((gossip_run / "config.yaml").read_text())
    rows = pd.read_csv(gossip_run / "metrics.csv").to_dict("records")
    fig = accuracy_figure(rows, run_title(cfg["aggregator"], cfg["dataset"]["name"], cfg["partition"]["name"],
                                          cfg["seed"]))
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"mean model (average of the nodes)", "nodes' own models: mean", "nodes' own models: worst"}
    for col, label in (("node_accuracy_mean", "nodes' own models: mean"),
                       ("node_accuracy_worst", "nodes' own models: worst")):
        assert list(lines[label].get_ydata()) == pytest.approx([r[col] for r in rows])  # the real node accuracies
    assert list(lines["mean model (average of the nodes)"].get_ydata()) == pytest.approx(
        [r["test_accuracy"] for r in rows])
    title = ax.get_title()
    assert "gossip" in title and "topology ring" in title and "variance correction on" in title
    fig.canvas.draw()
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())  # right of the data
    plain = accuracy_figure([{"round": 1, "test_accuracy": 0.5}], run_title({"name": "fedavg"}, "digits", "iid", 0))
    assert plain.axes[0].get_legend() is None and plain.axes[0].get_title() == "fedavg\non digits (iid), seed 0"
    assert "topology k_regular, degree 4; variance correction off" in run_title(
        {"name": "gossip", "topology": "k_regular", "degree": 4, "variance_correction": False}, "d", "p", 1)


@pytest.fixture
def lr_search(tmp_path):
    """An LR search as Optuna writes it: 24 learning rates with 17 digits, two of
    them alike to 3 significant digits, 2 rules."""
    root = tmp_path / "hpo"
    lrs = [0.012345678901234567 * 1.31 ** i for i in range(23)] + [0.012349999999999999]
    for rule in ("fedavg", "fedau"):
        for i, lr in enumerate(lrs):
            d = root / rule / f"{i}_train.lr={lr}"
            fake_run(d, rule, 0, [0.1, 0.2 + 0.01 * i])
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["train"] = {"lr": lr}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root, lrs


def test_lr_search_legend_short_rounded_labels_outside_the_axes(lr_search):
    import matplotlib

    matplotlib.use("Agg")
    from fedagg.report import summary as S

    root, lrs = lr_search
    runs_df, _, keys, curves, dirs, _ = S.build_tables(root, 1)
    groups = S._groups(runs_df, keys, dirs)
    fig = S.accuracy_figure(groups, runs_df, curves, dirs)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(texts) == len(set(texts)) == 48  # one entry per (rule, lr), all told apart
    assert "fedau, train.lr=0.0212 (n=1)" in texts and "fedavg, train.lr=0.0162 (n=1)" in texts
    assert max(len(t) for t in texts) <= 35, texts  # no 17-digit learning rates
    close = sorted(t for t in texts if t.startswith("fedavg, train.lr=0.0123"))
    assert close == ["fedavg, train.lr=0.012346 (n=1)", "fedavg, train.lr=0.01235 (n=1)"]  # more digits where needed
    fig.canvas.draw()
    leg = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not leg.overlaps(ax.get_window_extent())  # no entry covers a curve
    # every entry lands in the saved image (bbox_inches="tight" grows the canvas to hold the legend)
    fig.savefig(root / "x.png", bbox_inches="tight")
    import matplotlib.image as mpimg

    width_px = mpimg.imread(root / "x.png").shape[1]
    assert width_px >= (leg.x1 - min(a.get_window_extent().x0 for a in fig.axes)) * 0.99


def test_weights_figure_has_one_colour_scale_with_a_labelled_colorbar(sweep, tmp_path):
    from fedagg.report import summary as S

    # a second group with other weights: each panel's own range would differ
    rounds = [{"round": r, "asked": [0, 1], "replied": [0, 1], "failed": {}, "rejected": {},
               "weight_clients": [0, 1], "weights": [0.95, 0.05]} for r in (1, 2)]
    fake_run(sweep / "x_ida", "ida", 0, [0.2, 0.3], rounds_jsonl=rounds)
    runs_df, _, keys, curves, dirs, _ = S.build_tables(sweep, 2)
    fig = S.heatmap_figure(S._groups(runs_df, keys, dirs), runs_df, dirs, "weights")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 3  # fedau seeds 0 and 1, ida seed 0
    assert len({id(im.norm) for im in images}) == 1  # one shared scale
    assert (images[0].norm.vmin, images[0].norm.vmax) == pytest.approx((0.05, 0.95))  # over every panel
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "aggregation weight"
