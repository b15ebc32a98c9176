"""What the ``fedagg`` command promises, run in-process through ``fedagg.cli.main``:
a command that cannot work says so in one line on stderr (exit 2) and writes
nothing -- no run folder, nothing in the folder of a run it was asked to
resume; run folder names need no quoting; a resume continues in place; a run or
sweep that did not do its job never exits 0; the Python API records
status.json as the CLI does."""
from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

# sklearn digits, an MLP, three clients: a round takes a fraction of a second
TINY = ["runtime=inprocess", "dataset=digits", "model=mlp", "num_clients=3"]


def fedagg(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``fedagg ARGS`` in this process: (exit status, stdout, stderr)."""
    from fedagg import cli

    monkeypatch.setattr(sys, "argv", ["fedagg", *args])
    try:
        cli.main()
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    said = capsys.readouterr()
    return rc, said.out, said.err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and mtime (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def rounds(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["round"]) for r in csv.DictReader(f)]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def checkpointed(in_tmp, monkeypatch, capsys) -> Path:
    """A finished 2-round run with a checkpoint at round 2, in a folder whose name holds '=' ',' and a quote
    (the names fedagg itself used to make), marked interrupted as a killed run would be."""
    run = in_tmp / "outputs" / "x" / "12-00-00_checkpoint.every=1,rounds=2 it's"
    from fedagg.resume import hydra_quote

    rc, out, err = fedagg(monkeypatch, capsys, *TINY, "rounds=2", "checkpoint.every=1",
                          f"hydra.run.dir={hydra_quote(str(run))}")
    assert rc == 0, err[-3000:]
    st = status(run)
    st["status"] = "interrupted"
    (run / "status.json").write_text(json.dumps(st))
    return run


# ----------------------------------------------------------------- run folder names and resume
def test_run_folder_name_needs_no_quoting_in_a_shell_or_a_hydra_override():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from fedagg.cli import NAME_CHARS, run_folder_name

    assert run_folder_name("aggregator=fedau,rounds=5", "fedavg_s0") == "aggregator-fedau_rounds-5"
    assert run_folder_name("", "fedavg_s0") == "fedavg_s0"
    assert run_folder_name("+partition.num_biased=3,model.hidden=[64,32]", "f") == "partition.num_biased-3_model.hidden-_64_32"
    long = ",".join(f"aggregator.option_{i}=value{i}" for i in range(12))
    name = run_folder_name(long, "f")
    assert len(name) <= NAME_CHARS
    kept, digest = name.rsplit("_", 1)
    words = [f"aggregator.option_{i}-value{i}" for i in range(12)]
    assert len(digest) == 8 and kept in ["_".join(words[:k]) for k in range(1, 12)]  # cut at an override's end
    assert name != run_folder_name(long.replace("value11", "other"), "f")  # the hash tells them apart
    for odd in ["checkpoint.every=2", "dataset.path='/data/x y',noise.fraction=0.1", 'a="q",b=it\'s', long]:
        name = run_folder_name(odd, "f")
        assert shlex.quote(name) == name and not set(name) & set("=,'\" ")
        ov = OverridesParser.create().parse_override(f"resume=/o/2026-12-01/22-08-40_{name}")
        assert ov.value() == f"/o/2026-12-01/22-08-40_{name}"


def test_default_run_folder_resumes_with_the_printed_command(in_tmp, monkeypatch, capsys):
    """The issue's case: ``fedagg checkpoint.every=2`` made a folder ``..._checkpoint.every=2`` whose printed
    ``fedagg resume=...`` Hydra refused; the folder is now a slug, and the command continues it in place."""
    from fedagg.resume import resume_command

    rc, out, err = fedagg(monkeypatch, capsys, *TINY, "rounds=2", "checkpoint.every=2")
    assert rc == 0, err[-3000:]
    (run,) = (in_tmp / "outputs").glob("*/*")
    assert run.name.endswith("_checkpoint.every-2_dataset-digits_model-mlp_num_clients-3_rounds-2_runtime-inprocess")
    assert "checkpoint.every=2" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())  # kept as given
    cmd = resume_command(run)
    assert cmd == f"fedagg resume={run.resolve()}"  # needs no quoting
    rc, out, err = fedagg(monkeypatch, capsys, *shlex.split(cmd)[1:], "rounds=3")
    assert rc == 0, err[-3000:]
    assert rounds(run) == [1, 2, 3] and status(run)["status"] == "completed"
    assert [p.name for p in (in_tmp / "outputs").glob("*/*")] == [run.name]  # no second folder


def test_printed_resume_command_works_for_any_folder_name_and_continues_in_place(checkpointed, monkeypatch, capsys):
    from fedagg.resume import resume_command

    run = checkpointed
    cmd = resume_command(run)
    assert "=" in run.name and "'" in run.name
    started = status(run)["started"]
    rc, out, err = fedagg(monkeypatch, capsys, *shlex.split(cmd)[1:], "rounds=3")  # as a shell splits it
    assert rc == 0, err[-3000:]
    assert rounds(run) == [1, 2, 3]
    st = status(run)
    assert st["status"] == "completed" and st["started"] == started  # the same run, now completed
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # continued in place, no "..._resume=..."
    assert "rounds=3" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())


@pytest.mark.parametrize("why, args, words", [
    ("changes the result", ["aggregator=fedau"], ["resume error:", "would change the result", "aggregator.name"]),
    ("nothing left to do", [], ["resume error:", "round 2, rounds=2", "raise rounds"]),
    ("bad value", ["rounds=3", "train.lr=-1"], ["config error:", "train.lr=-1"]),
])
def test_refused_resume_writes_nothing_into_the_run_folder(checkpointed, monkeypatch, capsys, why, args, words):
    run = checkpointed
    before = snapshot(run)
    rc, out, err = fedagg(monkeypatch, capsys, f"resume={run}", *args)
    assert rc == 2 and "Traceback" not in out + err
    assert len(lines(err)) == 1 and not lines(out), (out, err)
    assert all(w in err for w in words), err
    assert snapshot(run) == before  # .hydra/, status.json, the log: bytes and mtimes unchanged
    rc, out, err = fedagg(monkeypatch, capsys, f"resume={run}", "rounds=3")  # and it still resumes
    assert rc == 0, err[-3000:]
    assert rounds(run) == [1, 2, 3]


def test_resuming_a_run_without_checkpoint_changes_nothing(in_tmp, monkeypatch, capsys):
    run = in_tmp / "done"
    rc, out, err = fedagg(monkeypatch, capsys, *TINY, "rounds=1", f"hydra.run.dir={run}")
    assert rc == 0, err[-3000:]
    before = snapshot(run)
    rc, out, err = fedagg(monkeypatch, capsys, f"resume={run}")
    assert rc == 2 and len(lines(err)) == 1 and "no checkpoint.pkl" in err and "Traceback" not in err
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a checkpoint"])
def test_corrupt_checkpoint_is_one_line_and_the_run_stays_interrupted(checkpointed, monkeypatch, capsys, damage):
    import pickle

    run = checkpointed
    ck = run / "checkpoint.pkl"
    if damage == "truncated":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    elif damage == "garbage":
        ck.write_bytes(b"\x00 this is not a pickle \xff" * 50)
    else:
        ck.write_bytes(pickle.dumps({"round": 1}))
    before = snapshot(run)
    rc, out, err = fedagg(monkeypatch, capsys, f"resume={run}", "rounds=3")
    assert rc == 2, err[-3000:]
    assert len(lines(err)) == 1 and not lines(out) and "Traceback" not in err, err
    assert err.startswith("resume error: ") and str(ck) in err
    assert ("not a readable checkpoint" if damage != "not a checkpoint" else "not a fedagg checkpoint") in err
    assert snapshot(run) == before and status(run)["status"] == "interrupted"  # a sweep can still resume it


def test_corrupt_model_file_in_fedagg_eval_is_one_line(checkpointed, capsys):
    from fedagg.evaluation import main as eval_main

    run = checkpointed
    assert eval_main([str(run)]) == 0
    capsys.readouterr()
    good = (run / "model.pt").read_bytes()
    for bad in (good[: len(good) // 2], b"garbage" * 10):
        (run / "model.pt").write_bytes(bad)
        rc = eval_main([str(run)])
        said = capsys.readouterr()
        assert rc == 2 and not lines(said.out) and len(lines(said.err)) == 1, said
        assert str(run / "model.pt") in said.err and "Traceback" not in said.err


# ----------------------------------------------------------------- config errors: plain, early, no folder
@pytest.mark.parametrize("args, words", [
    (["train.lr=-1"], ["train.lr=-1", "> 0"]),  # the cheap checks, before Hydra starts the job
    (["partition=natural"], ["partition.name=natural"]),  # a check that needs the data, inside the job
    (["--cfg", "job", "train.lr=-1"], ["train.lr=-1"]),  # printing the config checks it too
    (["hydra.run.dir=/proc/nope/run"], ["/proc/nope", "hydra.run.dir"]),  # an unwritable run folder
])
def test_config_error_is_one_plain_line_on_stderr_and_leaves_no_folder(in_tmp, monkeypatch, capsys, args, words):
    rc, out, err = fedagg(monkeypatch, capsys, *args, *TINY, "rounds=1")
    assert rc == 2, err[-3000:]
    assert not lines(out) and len(lines(err)) == 1, (out, err)
    assert err.startswith("config error: ") and "[fedagg]" not in err and "Traceback" not in err
    assert all(w in err for w in words), err
    assert list(in_tmp.iterdir()) == []  # no outputs/... folder marked failed


def test_config_error_comes_before_the_slow_imports(tmp_path):
    import subprocess

    from fedagg_testing import ROOT

    code = ("import sys; sys.argv = ['fedagg', 'train.lr=-1']\nfrom fedagg import cli\ntry:\n    cli.main()\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules, 'ray' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.stdout.split() == ["2", "False", "False"], p.stdout + p.stderr
    assert p.stderr.startswith("config error: train.lr=-1") and not list(tmp_path.iterdir())


# ----------------------------------------------------------------- sweeps
def test_sweep_checks_every_job_before_the_first_starts(in_tmp, monkeypatch, capsys):
    rc, out, err = fedagg(monkeypatch, capsys, "-m", *TINY, "rounds=1", "train.lr=0.1,-1,-2")
    assert rc == 2
    assert lines(err) == [
        "config error: train.lr=-1.0 is not allowed; it must be a finite number > 0",
        "config error: train.lr=-2.0 is not allowed; it must be a finite number > 0",
    ]
    assert list(in_tmp.iterdir()) == []  # the good first job never started: no multirun/ folder


def test_sweep_jobs_are_the_basic_sweepers_and_a_presets_params_count():
    from hydra import compose, initialize_config_dir

    from fedagg.config import CONF_DIR
    from fedagg.preflight import sweep_jobs

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        hc = compose("config", overrides=["+experiment=compare_participation"], return_hydra_config=True).hydra
    jobs = sweep_jobs(["+experiment=compare_participation", "hydra.launcher.n_jobs=2"], hc.sweeper)
    assert len(jobs) == 24  # 4 aggregators x 2 participations x 3 seeds, as the README's sweep says
    assert all(j[0] == "hydra.launcher.n_jobs=2" for j in jobs)
    assert {o for j in jobs for o in j if o.startswith("aggregator=")} == {
        "aggregator=fedavg", "aggregator=fedau", "aggregator=feddisco", "aggregator=ida"}
    assert sweep_jobs(["seed=0,1", "rounds=2"], {}) == [["seed=0", "rounds=2"], ["seed=1", "rounds=2"]]


def test_sweep_with_failed_jobs_exits_1_with_a_count(in_tmp, monkeypatch, capsys):
    """One job fails a check that needs the data, one has every update rejected, one completes."""
    sweep = in_tmp / "sweep"
    rc, out, err = fedagg(monkeypatch, capsys, "-m", *TINY, "rounds=2", "train.lr=1e30,0.1",
                          "partition=dirichlet,natural", f"hydra.sweep.dir={sweep}")
    assert rc == 1, err[-3000:]
    assert lines(err)[-1] == "sweep: 3 of 4 jobs failed (each job's status.json says why)"
    states = {d.name: status(d) for d in sweep.iterdir() if d.is_dir()}
    assert sorted(s["status"] for s in states.values()) == ["completed", "failed", "failed", "failed"]
    assert all("=" not in name and "," not in name for name in states)
    assert any("partition.name=natural" in s.get("error", "") for s in states.values())


# ----------------------------------------------------------------- no accepted update: failed
@pytest.mark.parametrize("n_rounds, stopped_after", [(5, 3), (2, 2)])
def test_run_whose_every_update_is_rejected_fails(in_tmp, monkeypatch, capsys, n_rounds, stopped_after):
    """train.lr=1e30 makes every update non-finite: each is rejected. The rounds without an accepted update
    count for server.max_failed_rounds (3), and a run shorter than that still ends failed, naming the reason."""
    run = in_tmp / "r"
    rc, out, err = fedagg(monkeypatch, capsys, *TINY, f"rounds={n_rounds}", "train.lr=1e30", f"hydra.run.dir={run}")
    assert rc == 1, err[-3000:]
    st = status(run)
    assert st["status"] == "failed" and "no update was accepted" in st["error"]
    assert "rejected: 'net." in st["error"] and "NaN or Inf" in st["error"]  # the first rejection's reason
    assert rounds(run) == list(range(1, stopped_after + 1))
    from fedagg.report.summary import main as report

    assert report([str(in_tmp), "--no-plots"]) == 0
    with open(in_tmp / "runs.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed"  # fedagg-report does not count it as a success


# ----------------------------------------------------------------- the Python API
def test_python_api_records_status_json_like_the_cli(tmp_path):
    from fedagg_testing import compose

    from fedagg.config import compose as checked
    from fedagg.errors import ConfigError
    from fedagg.experiment import run
    from fedagg.outcomes import RunFailed

    rows = run(checked([*TINY, "rounds=2"]), tmp_path / "ok")
    st = status(tmp_path / "ok")
    assert st["status"] == "completed" and st["final_test_accuracy"] == rows[-1]["test_accuracy"]
    assert st["finished"] >= st["started"]
    with pytest.raises(RunFailed):
        run(compose(*TINY, "rounds=1", "train.lr=1e30"), tmp_path / "rejected")
    assert status(tmp_path / "rejected")["status"] == "failed"
    with pytest.raises(ConfigError):
        run(compose(*TINY, "partition=natural"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before it ran: nothing written


def test_sweep_rerun_with_a_damaged_checkpoint_leaves_that_job_resumable(in_tmp, monkeypatch, capsys):
    sweep = in_tmp / "sweep"
    args = ["-m", *TINY, "rounds=2", "checkpoint.every=1", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    rc, out, err = fedagg(monkeypatch, capsys, *args)
    assert rc == 0, err[-3000:]
    first, second = sorted(d for d in sweep.iterdir() if d.is_dir())
    st = status(second)
    (second / "status.json").write_text(json.dumps({**st, "status": "interrupted"}))  # as a killed job leaves it
    ck = second / "checkpoint.pkl"
    ck.write_bytes(ck.read_bytes()[:100])
    before = snapshot(second)
    rc, out, err = fedagg(monkeypatch, capsys, *args)
    assert rc == 1
    assert [line for line in lines(err) if "error" in line] == [
        next(line for line in lines(err) if line.startswith(f"resume error: {ck} is not a readable checkpoint"))]
    assert lines(err)[-1] == "sweep: 1 of 2 jobs failed (each job's status.json says why)"
    assert status(first)["status"] == "completed"
    assert status(second)["status"] == "interrupted" and snapshot(second)["status.json"] == before["status.json"]
