"""fedagg's own --help / --version, and ``resume=<dir>`` alone reusing the run's overrides."""
from __future__ import annotations

import yaml

from fedagg.help import help_text, version
from fedagg.resume import expand_resume, override_key

from fedagg_testing import CONF_DIR


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
    assert expand_resume([f"resume={tmp_path / 'none'}"]) == [f"resume={tmp_path / 'none'}"]  # nothing saved


def test_version_is_fedaggs():
    assert version()[0].isdigit() or version().startswith("unknown")
