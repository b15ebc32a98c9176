"""fedagg's own --help / --version, and ``resume=<dir>`` alone reusing the run's overrides."""
from __future__ import annotations

import pytest
import yaml
from fedagg_testing import CONF_DIR

from fedagg.help import help_text, version
from fedagg.resume import expand_resume, override_key


def test_help_lists_groups_choices_and_an_example_each():
    text = help_text(CONF_DIR)
    assert not text.startswith("cli is powered by Hydra")
    for group in ("aggregator", "dataset", "partition", "participation", "heterogeneity", "model", "runtime"):
        assert f"  {group}: " in text
    assert "fedau" in text and "feddisco" in text and "e.g.     fedagg aggregator=feddisco" in text
    assert text.count("e.g.") >= 9


def test_override_key():
    assert override_key("+a.b=1") == "a.b" and override_key("~x") == "x" and override_key("aggregator=fedau") == "aggregator"


def test_resume_alone_reuses_the_saved_overrides_and_folder(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["aggregator=fedau", "rounds=3", "train.lr=0.1"]))
    got = expand_resume([f"resume={run}"])
    assert got == ["aggregator=fedau", "rounds=3", "train.lr=0.1", f"resume={run}", f"hydra.run.dir={run.resolve()}"]
    # an override given now wins over the saved one for the same key
    got = expand_resume([f"resume={run}", "rounds=5"])
    assert "rounds=3" not in got and got.index("rounds=5") > got.index("aggregator=fedau")
    assert expand_resume(["rounds=2"]) == ["rounds=2"]  # no resume: unchanged
    none = (tmp_path / "none").resolve()  # nothing saved (a run made without the CLI): still in its folder
    assert expand_resume([f"resume={tmp_path / 'none'}"]) == [f"resume={none}", f"hydra.run.dir={none}"]
    odd = tmp_path / "22-08-40_checkpoint.every=2"  # a folder named by an older fedagg: quoted for Hydra
    assert expand_resume([f"resume='{odd}'"]) == [f"resume='{odd.resolve()}'", f"hydra.run.dir='{odd.resolve()}'"]


def test_version_is_fedaggs():
    assert version()[0].isdigit() or version().startswith("unknown")


def test_run_folder_name_carries_the_overrides():
    from fedagg.cli import run_folder_name

    assert run_folder_name("aggregator=fedau,seed=1", "fedavg_s0") == "aggregator-fedau_seed-1"
    assert run_folder_name("", "fedavg_s0") == "fedavg_s0"
    assert "/" not in run_folder_name("dataset.path=/data/x y", "f") and len(run_folder_name("a=1," * 100, "f")) <= 100


def test_version_and_help_are_fedaggs_and_the_run_folder_is_named(tmp_path):
    import os
    import subprocess

    from fedagg_testing import ROOT, fedagg_cmd

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.run([*fedagg_cmd(), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("fedagg ") and "Hydra" not in p.stdout
    p = subprocess.run([*fedagg_cmd(), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and "powered by Hydra" not in p.stdout and "aggregator: the aggregation rule" in p.stdout
    p = subprocess.run([*fedagg_cmd(), "runtime=inprocess", "dataset=digits", "model=mlp", "num_clients=2", "rounds=1"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert run.name.endswith("_dataset-digits_model-mlp_num_clients-2_rounds-1_runtime-inprocess")
    assert "alembic" not in p.stdout + p.stderr


def test_progress_bar_with_eta_on_a_terminal_plain_lines_otherwise(tmp_path):
    """Under a pseudo-terminal the run shows a tqdm bar (rounds done/total, ETA);
    piped (logs, CI) it shows only the plain per-round lines."""
    import os
    import pty
    import subprocess

    from fedagg_testing import ROOT, fedagg_cmd

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("CI", None)
    args = [*fedagg_cmd(), "runtime=inprocess", "dataset=digits", "model=mlp", "num_clients=2", "rounds=3"]
    master, slave = pty.openpty()
    p = subprocess.Popen([*args, f"hydra.run.dir={tmp_path / 'tty'}"], stdin=slave, stdout=slave, stderr=slave,
                         env=env, cwd=tmp_path)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=180)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0, screen[-2000:]
    assert "fedagg: 100%|" in screen and "| 3/3 [" in screen, screen[-1500:]  # the bar: rounds done / total
    assert "<00:" in screen  # elapsed<remaining: the ETA
    assert "round 3/3 |" in screen  # the plain lines are still printed above the bar
    piped = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'pipe'}"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=180)
    assert piped.returncode == 0
    assert "round 3/3 |" in piped.stdout and "3/3 [" not in piped.stdout + piped.stderr


@pytest.mark.slow
def test_flower_runtime_prints_no_third_party_noise(tmp_path):
    """runtime=flower used to add alembic's plugin INFO lines, Flower's
    run_simulation deprecation banner and Ray's FutureWarning."""
    import os
    import subprocess

    from fedagg_testing import ROOT, fedagg_cmd

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", None)  # the suite's conftest sets it; a user's shell does not
    p = subprocess.run([*fedagg_cmd(), "runtime=flower", "dataset=digits", "model=mlp", "num_clients=2", "rounds=1",
                        f"hydra.run.dir={tmp_path / 'r'}"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    said = p.stdout + p.stderr
    assert "alembic" not in said and "DEPRECATED" not in said and "FutureWarning" not in said, said[-3000:]
    assert "round 1/1 |" in said
