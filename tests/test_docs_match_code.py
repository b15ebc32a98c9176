"""What the docs and --help say about the code is read from the code, or
checked against it here: --help's defaults are the schema's, every config
choice shipped is in the README's table of its group, and the folders the
README's commands write are ignored by git."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from fedagg_testing import CONF_DIR, ROOT
from fedagg_testing import compose as raw_compose
from omegaconf import OmegaConf

from fedagg.help import help_text


def _keys_section(text: str) -> str:
    return text.split("plain keys", 1)[1].split("\n", 1)[1].split("\nresults:", 1)[0]  # below its title line


def test_every_default_help_prints_is_the_schemas():
    cfg = raw_compose()  # the composed default config: the schema's values, merged with conf/config.yaml
    shown = re.findall(r"(?<![\w.])([a-z_]+(?:\.[a-z_]+)*)=(\S+)", _keys_section(help_text(CONF_DIR)))
    shown = [(k, v) for k, v in shown if not v.startswith("<")]
    assert len(shown) >= 12, shown
    for key, value in shown:
        want = OmegaConf.select(cfg, key, default="<missing>")
        assert want != "<missing>", f"--help shows {key}, which is not a config key"
        assert OmegaConf.to_yaml({"v": want}).strip() == f"v: {value}", f"--help shows {key}={value}; the default is {want}"
    assert ("train.lr_decay", "1.0") in shown  # the value --help once got wrong (0.99)


def _readme_group_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("| config group | choices |", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", table, re.M)}


def test_every_shipped_choice_is_in_the_readmes_table_of_its_group():
    rows = _readme_group_rows()
    groups = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "experiment")
    assert set(groups) <= set(rows), f"groups without a README row: {sorted(set(groups) - set(rows))}"
    for group in groups:
        listed = set(re.findall(r"`([^`]+)`", rows[group]))
        missing = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml") if p.stem not in listed)
        assert not missing, f"README's {group} row lacks {missing} (fedagg/conf/{group}/)"


def test_the_readmes_output_folders_are_ignored_by_git():
    import subprocess

    text = (ROOT / "README.md").read_text()
    outs = {o for o in re.findall(r"--out-dir (\S+)", text) if not o.startswith("/")} | {"outputs/x", "multirun/x"}
    assert any(o.startswith("results/") for o in outs)
    for out in sorted(outs):
        p = subprocess.run(["git", "check-ignore", "-q", out], cwd=ROOT)
        assert p.returncode == 0, f"{out} (written by a README command) is not in .gitignore"


def test_warnings_the_readme_says_come_once_come_once_per_run(tmp_path, caplog):
    """Three rounds in which every update is rejected (non-finite): the warning
    that no valid update arrived is said once, not every round (NobodyAsked's
    once-per-run rule is tested in test_outcomes.py)."""
    import logging

    from fedagg_testing import SMALL
    from fedagg_testing import compose as hcompose

    from fedagg.experiment import run
    from fedagg.outcomes import RunFailed

    with caplog.at_level(logging.WARNING, logger="fedagg"), pytest.raises(RunFailed, match="no update was accepted"):
        run(hcompose(*SMALL, "rounds=3", "runtime=inprocess", "train.lr=1e30", "server.max_failed_rounds=0"),
            tmp_path)  # and a run that never accepted an update has failed
    with open(tmp_path / "metrics.csv") as f:
        rows = [{k: int(v) for k, v in r.items() if k.startswith("clients_")} for r in csv.DictReader(f)]
    assert len(rows) == 3
    said = [r.getMessage() for r in caplog.records]
    assert all(r["clients_replied"] == 0 and r["clients_rejected"] == r["clients_asked"] > 0 for r in rows), rows
    assert sum("no valid update arrived" in m for m in said) == 1, said
    assert any("once per run" in m for m in said if "no valid update arrived" in m)
