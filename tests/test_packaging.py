"""A non-editable ``pip install .`` carries the configs: from an empty
folder, ``fedagg rounds=2 runtime=inprocess`` runs in a fresh venv."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from fedagg_testing import ROOT


def test_non_editable_install_runs_from_an_empty_folder(tmp_path):
    src = tmp_path / "src"  # only what a user clones: no build leftovers, no .venv
    shutil.copytree(ROOT / "fedagg", src / "fedagg", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # reuse this interpreter's installed dependencies (torch, flwr, ...) and pip, behind the venv's own site-packages
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "zz_parent_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    installed = Path(site) / "fedagg"
    assert (installed / "conf" / "config.yaml").is_file()
    assert (installed / "conf" / "aggregator" / "fedavg.yaml").is_file()
    work = tmp_path / "empty"
    work.mkdir()
    p = subprocess.run([str(venv / "bin" / "fedagg"), "rounds=2", "runtime=inprocess"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (metrics,) = work.glob("outputs/*/*/metrics.csv")  # Hydra's default run folder under the empty folder
    assert len(metrics.read_text().strip().splitlines()) == 3  # header + 2 rounds
    where = subprocess.run([str(py), "-c", "import fedagg; print(fedagg.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True).stdout
    assert where.startswith(str(installed)), where  # the installed copy ran, not the checkout
