"""Environment for the whole suite; shared helpers are in fedagg_testing.py."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FEDAGG_CACHE", str(Path.home() / ".cache" / "fedagg"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
