"""Helpers shared by the end-to-end tests (imported by name, unlike conftest)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from fedagg.config import CONF_DIR  # noqa: E402  (registers the typed schema)

# small, fast settings shared by the end-to-end tests (sklearn digits, MLP)
SMALL = ["dataset=digits", "num_clients=6", "rounds=3", "model=mlp", "train.lr=0.1", "train.momentum=0.9"]


def compose(*overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return hcompose("config", overrides=list(overrides))


def fedagg_cmd() -> list[str]:
    return [sys.executable, "-m", "fedagg.cli"]
