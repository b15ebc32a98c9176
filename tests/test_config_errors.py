"""Every config value that cannot work ends the CLI with exit status 2 and
ONE line naming the key, the value and what is allowed -- no traceback, no
run folder results, nothing trained, Ray never started."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fedagg_testing import ROOT, fedagg_cmd
from fedagg_testing import compose as raw_compose

from fedagg.config import CONF_DIR, Config, compose, load, to_config
from fedagg.errors import ConfigError

# (overrides, words the one line must contain)
CASES = [
    (["participation=uniform", "participation.fraction=0"], ["participation.fraction", "0", "(0, 1]"]),
    (["noise=label_flip", "noise.fraction=1.5"], ["noise.fraction", "1.5", "[0, 1]"]),
    (["aggregator=feddisco", "aggregator.metric=kll"], ["aggregator.metric", "kll", "kl, l2, l1, cosine"]),
    (["aggregator=gossip", "aggregator.topology=star"], ["aggregator.topology", "star", "ring"]),
    (["partition=natural", "dataset=digits"], ["partition.name=natural", "dataset=synthetic"]),
    (["participation=trace", "participation.path=/no/such/trace.csv"], ["participation.path", "/no/such/trace.csv",
                                                                         "does not exist"]),
    (["dataset=synthetic", "dataset.num_samples=400000", "dataset.num_users=100000"],
     ["dataset.num_samples=400000", "dataset.num_users=100000", ">= 5 x"]),
    (["train.epochs=0"], ["train.epochs=0", ">= 1"]),
    (["train.steps=-2"], ["train.steps=-2", ">= 0"]),
    (["train.momentum=-0.5"], ["train.momentum=-0.5", "[0, 1)"]),
    (["checkpoint.every=-1"], ["checkpoint.every=-1", ">= 0"]),
    (["runtime.num_cpus=0"], ["runtime.num_cpus=0", ">= 1"]),
    (["runtime=ray", "runtime.num_workers=0"], ["runtime.num_workers=0", ">= 1"]),
    (["+num_client=5"], ["num_client=5", "not a config key", "num_clients"]),
    (["num_client=5"], ["num_client", "not a config key"]),
    (["aggregator=gossip", "aggregator.topology=erdos_renyi", "aggregator.p=0.05"],
     ["aggregator.p=0.05", "without neighbours", "aggregator.p=0.21 or more"]),
    (["aggregator=nosuch"], ["aggregator/nosuch", "fedavg"]),
    (["train.epochs=abc"], ["train.epochs=abc", "Integer"]),
    (["+aggregator.nosuch=1"], ["aggregator.nosuch=1", "valid options:", "server_lr"]),
    (["aggregator.server_momentum=fast"], ["aggregator.server_momentum", "fast", "float"]),
    (["participation=trace"], ["participation.path", "required"]),
]


@pytest.mark.parametrize("overrides, words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_cli_refuses_bad_value_in_one_line(overrides, words, tmp_path):
    p = subprocess.run(
        fedagg_cmd() + [*overrides, "rounds=2", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    out = (p.stdout + p.stderr).strip()
    lines = [line for line in out.splitlines() if line.strip()]
    assert p.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert len(lines) == 1, out
    assert "config error" in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "model.pt").exists()


def test_schema_holds_one_default_per_key():
    """conf/config.yaml keeps no values of its own: the typed schema is the
    only place a fixed key's default lives."""
    import yaml

    text = yaml.safe_load((Path(CONF_DIR) / "config.yaml").read_text())
    assert set(text) == {"defaults", "hydra"}
    assert text["defaults"][0] == "base_config"
    for sub in ("ray", "flower", "inprocess"):
        assert set(yaml.safe_load((Path(CONF_DIR) / "runtime" / f"{sub}.yaml").read_text())) == {"name"}
    cfg = load(raw_compose())
    assert isinstance(cfg, Config)
    assert (cfg.train.lr, cfg.train.epochs, cfg.num_clients, cfg.rounds) == (0.05, 2, 20, 30)


def test_load_returns_typed_values():
    cfg = compose(["train.lr=1", "runtime=ray", "runtime.batch_size=auto", "num_clients=7"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.runtime.batch_size == "auto" and cfg.num_clients == 7
    with pytest.raises(ConfigError, match="runtime.batch_size"):
        load(to_config(raw_compose("runtime.batch_size=many")))
