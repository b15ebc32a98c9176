from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FEDAGG_CACHE", str(Path.home() / ".cache" / "fedagg"))
os.environ.setdefault("MPLBACKEND", "Agg")

# small, fast settings shared by the end-to-end tests
SMALL = [
    "dataset=digits", "num_clients=6", "rounds=3", "model=mlp",
    "train.lr=0.1", "train.momentum=0.9",
]


def compose(*overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return hcompose("config", overrides=list(overrides))


@pytest.fixture
def cfg_factory():
    return compose


def fedagg_cmd() -> list[str]:
    return [sys.executable, "-m", "fedagg.cli"]
