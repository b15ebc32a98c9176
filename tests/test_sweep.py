"""Presets (+experiment=...), the CPU budget for parallel sweep jobs, the
optional TensorBoard logger and a joblib sweep that must not hang."""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fedagg_testing import ROOT, compose, fedagg_cmd
from omegaconf import OmegaConf

from fedagg.config import CONF_DIR, load, to_config
from fedagg.errors import ConfigError
from fedagg.experiment import run
from fedagg.report.loggers import check_logger, make_logger
from fedagg.sweep import apply_cpu_budget, available_cores, cpu_share, parallel_jobs

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
# presets on Hub datasets (paper_*, bench_*) run on schema-exact stand-ins in test_workloads_e2e.py
OFFLINE_PRESETS = [p for p in PRESETS if not p.startswith(("paper_", "bench_"))]


def test_presets_exist():
    assert {"small", "compare_participation"} <= set(PRESETS)
    for name in PRESETS:
        assert (Path(CONF_DIR) / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_validates(name):
    cfg = compose(f"+experiment={name}")
    load(cfg)


def test_command_line_beats_preset():
    cfg = compose("+experiment=small", "dataset=mnist1d", "rounds=7")
    assert cfg.dataset.name == "mnist1d" and cfg.rounds == 7


def test_compare_participation_sweeps_the_readme_question():
    text = yaml.safe_load((Path(CONF_DIR) / "experiment" / "compare_participation.yaml").read_text())
    params = text["hydra"]["sweeper"]["params"]
    assert set(params["aggregator"].split(",")) == {"fedavg", "fedau", "feddisco", "ida"}
    assert len(params["participation"].split(",")) == 2
    for agg in params["aggregator"].split(","):
        for p in params["participation"].split(","):
            load(compose("+experiment=compare_participation", f"aggregator={agg}", f"participation={p}"))
    cfg = compose("+experiment=compare_participation")
    assert cfg.dataset.name == "mnist1d" and cfg.runtime.name == "inprocess"


@pytest.mark.parametrize("name", OFFLINE_PRESETS)
def test_every_preset_runs(name, tmp_path):
    """Shrunk to 2 rounds / 6 clients so each takes seconds."""
    rows = run(compose(f"+experiment={name}", "rounds=2", "num_clients=6", "participation=full"), tmp_path)
    rows = [r for r in rows if r["round"] > 0]  # a preset with eval.every also scores the initial model (round 0)
    assert len(rows) == 2 and rows[-1]["test_accuracy"] > 0


def test_cli_help_and_cfg_job():
    p = subprocess.run(fedagg_cmd() + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "aggregator:" in p.stdout and "experiment:" in p.stdout
    p = subprocess.run(fedagg_cmd() + ["--cfg", "job", "+experiment=compare_participation"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    job = yaml.safe_load(p.stdout)
    assert job["dataset"]["name"] == "mnist1d" and job["logger"]["name"] == "csv"


# --------------------------------------------------------------------------- CPU budget
@pytest.mark.parametrize("cores, n_jobs, share", [(2, 2, 1), (2, 4, 1), (16, 2, 8), (16, 3, 5), (8, -1, 1),
                                                   (8, -2, 1), (8, -7, 4), (1, 1, 1), (4, 1, 4)])
def test_cpu_share(cores, n_jobs, share):
    assert cpu_share(cores, n_jobs) == share


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def _hc(mode="MULTIRUN", target=JOBLIB, n_jobs=2):
    """The two bits of HydraConfig the budget reads: mode.name and launcher."""
    return OmegaConf.create({"mode": {"name": mode}, "launcher": {"_target_": target, "n_jobs": n_jobs}})


def test_joblib_job_gets_its_cpu_share(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    cfg = to_config(compose("runtime=flower", "runtime.num_cpus_per_client=2"))
    assert apply_cpu_budget(cfg, _hc(n_jobs=2), cores=8) == 4
    assert cfg.runtime.num_cpus == 4 and cfg.runtime.num_cpus_per_client == 2
    cfg = to_config(compose("runtime=flower", "runtime.num_cpus_per_client=2"))
    apply_cpu_budget(cfg, _hc(n_jobs=4), cores=4)
    assert cfg.runtime.num_cpus == 1 and cfg.runtime.num_cpus_per_client == 1  # else never scheduled
    cfg = to_config(compose("runtime=inprocess"))  # struct config without the key: added
    apply_cpu_budget(cfg, _hc(n_jobs=2), cores=2)
    assert cfg.runtime.num_cpus == 1
    cfg = to_config(compose("runtime=flower", "runtime.num_cpus=3"))  # explicit: respected
    apply_cpu_budget(cfg, _hc(n_jobs=2), cores=2)
    assert cfg.runtime.num_cpus == 3


def test_no_split_outside_parallel_launchers():
    assert parallel_jobs(_hc(mode="RUN")) is None
    assert parallel_jobs(_hc(target="hydra._internal.core_plugins.basic_launcher.BasicLauncher")) is None
    assert parallel_jobs(_hc(target="hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher")) is None
    assert parallel_jobs(_hc(n_jobs=None)) == -1
    cfg = to_config(compose("runtime=flower"))
    assert apply_cpu_budget(cfg, _hc(mode="RUN"), cores=2) is None
    assert cfg.runtime.num_cpus is None


# --------------------------------------------------------------------------- loggers
def test_logger_group_default_is_csv():
    assert compose().logger.name == "csv"
    check_logger(load(compose()).logger)


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ConfigError, match="logger.name"):
        check_logger({"name": "wandb"})


def test_tensorboard_missing_is_a_clear_config_error(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "tensorboard" else real(name, *a, **k))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        check_logger(load(compose("logger=tensorboard")).logger)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        run(compose("+experiment=small", "rounds=1", "logger=tensorboard"), tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_tensorboard_writes_scalars(tmp_path):  # tensorboard is a dev dependency
    run(compose("+experiment=small", "rounds=2", "logger=tensorboard"), tmp_path)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    lg = make_logger(load(compose("logger=tensorboard")).logger, tmp_path / "x")
    lg.log({"round": 1, "test_accuracy": 0.5, "note": "skip"})
    lg.close()


# --------------------------------------------------------------------------- job tags on console lines
def test_job_tag_prefixes_a_sweep_jobs_lines_and_only_while_it_runs(caplog):
    """The Hydra callback tags every fedagg line of a multirun job with
    [job N]; the next job's tag replaces it (one process may run several
    jobs); a single run and the time after a job carry none."""
    from fedagg.callbacks import ConsoleLine
    from fedagg.console import JobTag, set_job_tag
    from fedagg.flower.strategy import RoundRecord

    rec = RoundRecord(1, [0, 1], [0], {1: "no reply"}, {}, 0.5, {}, 0.9, 0.7)
    cb = JobTag()

    def round_line() -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fedagg"):
            ConsoleLine(2).after_round(rec, None)
        (msg,) = caplog.messages
        return msg

    try:
        for mode, num, head in (("MULTIRUN", 3, "[job 3] round 1/2 |"), ("MULTIRUN", 4, "[job 4] round 1/2 |"),
                                ("RUN", 0, "round 1/2 |")):
            cfg = OmegaConf.create({"hydra": {"mode": {"name": mode}, "job": {"num": num}}})
            cb.on_job_start(cfg)
            assert round_line().startswith(head)
        cb.on_job_start(OmegaConf.create({"hydra": {"mode": {"name": "MULTIRUN"}, "job": {"num": 5}}}))
        cb.on_job_end(cfg, None)
        assert round_line().startswith("round 1/2 |")  # the job is over: no tag
    finally:
        set_job_tag(None)
    wired = yaml.safe_load((Path(CONF_DIR) / "config.yaml").read_text())["hydra"]["callbacks"]["job_tag"]
    assert wired == {"_target_": "fedagg.console.JobTag"}


# --------------------------------------------------------------------------- a parallel sweep
@pytest.mark.slow
def test_joblib_sweep_of_12_jobs_finishes(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = fedagg_cmd() + ["-m", "+experiment=small", "rounds=2", "seed=range(0,12)",
                          "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:  # a hung job: fail, do not block the suite
        pytest.fail(f"joblib sweep hung (> {e.timeout}s)")
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d for d in sweep.iterdir() if (d / "config.yaml").exists())
    assert len(runs) == 12, (took, [d.name for d in sweep.iterdir()])
    share = cpu_share(available_cores(), 2)
    for d in runs:
        assert json.loads((d / "status.json").read_text())["status"] == "completed"
        assert yaml.safe_load((d / "config.yaml").read_text())["runtime"]["num_cpus"] == share
        # the job's own round lines carry its number (the folder's prefix), in its log file too
        num = d.name.split("_")[0]
        mine = [x for x in "".join(f.read_text() for f in d.glob("*.log")).splitlines() if " | asked " in x]
        assert len(mine) == 2 and all(f"- [job {num}] round " in x for x in mine), mine
    # on the console the two jobs' lines interleave; each says which job it belongs to
    shown = [x for x in (p.stdout + p.stderr).splitlines() if " | asked " in x]
    assert len(shown) == 24 and all(re.search(r"\[job \d+\] round \d/2 \|", x) for x in shown), shown[:4]
    assert {re.search(r"\[job (\d+)\]", x).group(1) for x in shown} == {str(i) for i in range(12)}
    print(f"12-job joblib sweep: {took:.1f}s")


def test_unknown_preset_is_a_clear_error(tmp_path):
    p = subprocess.run(fedagg_cmd() + ["+experiment=nosuch", "runtime=inprocess", f"hydra.run.dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "Could not find 'experiment/nosuch'" in p.stderr and "compare_participation" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "metrics.csv").exists()
