"""How a run ends, as a user sees it from the command line: a run whose
clients all fail stops as failed (exit 1); Ctrl-C finishes the round,
checkpoints, prints the resume command and exits 130 without a traceback;
``fedagg resume=<dir>`` alone continues in the same folder; an interrupted
sweep re-run with the same sweep dir skips finished jobs and resumes the
interrupted one."""
from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from fedagg_testing import ROOT, fedagg_cmd

# slow enough per round (~0.3-1 s) to interrupt between rounds, small enough to finish in seconds
SLOW = ["runtime=inprocess", "dataset=digits", "model=mlp", "num_clients=4", "train.epochs=25", "participation=full"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("CI", None)
    return env


def _fedagg(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*fedagg_cmd(), *args], capture_output=True, text=True, env=_env(), cwd=cwd,
                          timeout=timeout)


def _rows(run: Path) -> list[dict[str, str]]:
    try:
        with open(run / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*fedagg_cmd(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=cwd)


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_all_clients_failing_stops_the_run_as_failed(tmp_path):
    run = tmp_path / "r"
    p = _fedagg(["runtime=inprocess", "dataset=digits", "model=mlp", "num_clients=3", "rounds=20",
                 "heterogeneity=crashes", "heterogeneity.rate=1.0", "server.max_failed_rounds=3",
                 f"hydra.run.dir={run}"], tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    st = _status(run)
    assert st["status"] == "failed" and "injected crash" in st["error"]
    assert "3 consecutive rounds" in st["error"]
    assert len(_rows(run)) == 3  # stopped after 3 all-failed rounds, not 20
    errors = [line for line in (p.stdout + p.stderr).splitlines() if "run failed" in line]
    assert len(errors) == 1 and errors[0].count("injected crash") == 1  # the client error named once
    import sys

    rep = subprocess.run([sys.executable, "-m", "fedagg.report", str(tmp_path), "--no-plots"], capture_output=True,
                         text=True, env=_env(), timeout=120)
    assert rep.returncode == 0, rep.stderr[-2000:]
    with open(tmp_path / "runs.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed" and "consecutive rounds" in row["error"]  # a sweep report counts it as failed


@pytest.mark.slow
def test_ctrl_c_finishes_the_round_checkpoints_and_resumes_exactly(tmp_path):
    run = tmp_path / "r"
    args = [*SLOW, "rounds=6", "checkpoint.every=4", f"hydra.run.dir={run}"]
    proc = _start(args, tmp_path)
    _wait_for(lambda: len(_rows(run)) >= 1, 120, "round 1", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    st = _status(run)
    assert st["status"] == "interrupted"
    done = len(_rows(run))
    assert 1 <= done < 6
    with open(run / "checkpoint.pkl", "rb") as f:
        assert pickle.load(f)["round"] == done  # checkpoint written on interrupt (every=4 would not have)
    assert f"fedagg resume={run}" in out + err  # the exact resume command
    # resume alone: same folder, saved config, ends as the uninterrupted run does
    p = _fedagg([f"resume={run}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [int(r["round"]) for r in _rows(run)] == [1, 2, 3, 4, 5, 6]
    assert _status(run)["status"] == "completed"
    ref = tmp_path / "ref"
    p = _fedagg([*SLOW, "rounds=6", f"hydra.run.dir={ref}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = torch.load(run / "model.pt"), torch.load(ref / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # an override that changes the result is refused, showing the old and new values
    p = _fedagg([f"resume={run}", "rounds=8", "train.lr=0.2"], tmp_path)
    said = p.stdout + p.stderr
    assert p.returncode == 2 and "Traceback" not in said
    assert "train.lr: 0.05 in the checkpoint, 0.2 now" in said


@pytest.mark.slow
def test_second_ctrl_c_aborts_without_traceback(tmp_path):
    run = tmp_path / "r"
    proc = _start([*SLOW, "rounds=50", f"hydra.run.dir={run}"], tmp_path)
    _wait_for(lambda: len(_rows(run)) >= 1, 120, "round 1", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert _status(run)["status"] == "interrupted"


@pytest.mark.slow
def test_interrupted_sweep_skips_finished_jobs_and_resumes_the_interrupted_one(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SLOW, "rounds=4", "checkpoint.every=1", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}"]
    proc = _start(args, tmp_path)
    jobs = lambda: sorted(d for d in sweep.glob("*") if d.is_dir() and (d / "status.json").exists())  # noqa: E731
    _wait_for(lambda: len(jobs()) >= 2 and len(_rows(jobs()[1])) >= 1, 240, "job 1's first round", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    states = [_status(d)["status"] for d in jobs()]
    assert states[:2] == ["completed", "interrupted"] and len(states) == 2  # later jobs never started
    first_finished = _status(jobs()[0])["finished"]
    p = _fedagg(args, tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [_status(d)["status"] for d in jobs()] == ["completed"] * 4
    assert _status(jobs()[0])["finished"] == first_finished  # skipped, not re-run
    assert [int(r["round"]) for r in _rows(jobs()[1])] == [1, 2, 3, 4]  # resumed: each round once


@pytest.mark.slow
def test_ctrl_c_on_the_ray_runtime(tmp_path):
    """The Ray actor pool used to leave status.json at 'running' with a traceback."""
    run = tmp_path / "r"
    proc = _start([*SLOW, "runtime=ray", "rounds=60", "checkpoint.every=50", f"hydra.run.dir={run}"], tmp_path)
    _wait_for(lambda: len(_rows(run)) >= 1, 180, "round 1", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    assert _status(run)["status"] == "interrupted" and len(_rows(run)) < 60
    assert f"fedagg resume={run}" in out + err


def _try_status(run: Path) -> str | None:
    try:
        return _status(run)["status"]
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return None


@pytest.mark.slow
@pytest.mark.parametrize("to", ["command", "process group"])  # kill -INT <pid>, a terminal's Ctrl-C
def test_interrupted_joblib_sweep_lets_running_jobs_finish_their_round(tmp_path, to):
    """Under hydra/launcher=joblib the jobs run in worker processes: SIGINT to the command used to kill them
    mid-round with status.json left at 'running'. Now each running job finishes its round and ends
    'interrupted', later jobs are not started, and the re-run completes the sweep, resuming each job once."""
    sweep = tmp_path / "sweep"
    args = ["-m", *SLOW, "rounds=12", "checkpoint.every=1", "seed=0,1,2,3,4,5", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    log = open(tmp_path / "out.txt", "w")  # noqa: SIM115 - a pipe could fill up and block the sweep
    proc = subprocess.Popen([*fedagg_cmd(), *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(),
                            cwd=tmp_path, start_new_session=True)
    jobs = lambda: sorted(d for d in sweep.glob("*") if (d / "status.json").exists())  # noqa: E731
    mid_round = lambda: any(_try_status(d) == "running" and len(_rows(d)) >= 1 for d in jobs())  # noqa: E731
    _wait_for(mid_round, 240, "a job past its first round", proc)
    if to == "command":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=180)
    log.close()
    said = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 130, said[-3000:]
    assert "Traceback" not in said
    states = {d.name: _try_status(d) for d in jobs()}
    assert set(states.values()) <= {"completed", "interrupted"}, states
    assert "interrupted" in states.values() and len(states) < 6, states  # later jobs never started
    stopped = [d for d in jobs() if states[d.name] == "interrupted"]
    # the job mid-round finished that round; one still starting up when the signal came stops at once (0 rounds)
    assert all(len(_rows(d)) < 12 for d in stopped) and any(len(_rows(d)) >= 1 for d in stopped)
    finished = {d.name: _status(d)["finished"] for d in jobs() if states[d.name] == "completed"}
    p = _fedagg(args, tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(jobs()) == 6 and all(_status(d)["status"] == "completed" for d in jobs())
    assert all(_status(sweep / name)["finished"] == t for name, t in finished.items())  # skipped, not re-run
    for d in stopped:  # resumed from its checkpoint: every round exactly once
        assert [int(r["round"]) for r in _rows(d)] == list(range(1, 13))


@pytest.mark.slow
def test_printed_resume_command_runs_verbatim_in_a_shell(tmp_path):
    """``fedagg checkpoint.every=2`` interrupted prints ``fedagg resume=...``; pasted into a shell as printed it
    used to be refused by Hydra (the folder name held '=' and ','). Now it continues the run in its own folder."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fedagg").write_text(f'#!/bin/sh\nexec {sys.executable} -m fedagg.cli "$@"\n')
    (bin_dir / "fedagg").chmod(0o755)
    proc = _start([*SLOW, "rounds=6", "checkpoint.every=2"], tmp_path)
    runs = lambda: list((tmp_path / "outputs").glob("*/*"))  # noqa: E731
    _wait_for(lambda: len(runs()) == 1 and len(_rows(runs()[0])) >= 1, 120, "round 1", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    said = (out + err).splitlines()
    cmd = said[said.index(next(line for line in said if line.endswith("resume with:"))) + 1].strip()
    (run,) = runs()
    assert cmd == f"fedagg resume={run.resolve()}"
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                       env=dict(_env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert runs() == [run]  # in place: no "..._resume=..." folder
    assert [int(r["round"]) for r in _rows(run)] == [1, 2, 3, 4, 5, 6]
    assert _status(run)["status"] == "completed"


@pytest.mark.slow
def test_ctrl_c_during_start_up_stops_at_once(tmp_path):
    """SIGINT while the run starts (imports, data, Ray) used to wait for Ray and a whole round."""
    run = tmp_path / "r"
    proc = _start([*SLOW, "runtime=ray", "rounds=3", "checkpoint.every=1", f"hydra.run.dir={run}"], tmp_path)
    _wait_for(lambda: (run / ".hydra").exists(), 120, "the job to start", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    assert _rows(run) == []  # no round was run after the signal
    assert _status(run)["status"] == "interrupted"
    assert "during start-up" in out + err and "run the same command again" in out + err
    print(f"SIGINT during start-up: exit after {took:.1f}s")
