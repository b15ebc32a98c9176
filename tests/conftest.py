from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FEDAGG_CACHE", str(Path.home() / ".cache" / "fedagg"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture
def cfg_factory():
    from fedagg_testing import compose

    return compose


# re-exported for older test modules; prefer `from fedagg_testing import ...`
from fedagg_testing import CONF_DIR, ROOT, SMALL, compose, fedagg_cmd  # noqa: E402,F401
