"""Optional metric loggers called once per round with the metrics.csv row.

``logger=csv`` (default): nothing beyond metrics.csv / rounds.jsonl.
``logger=tensorboard``: every numeric column of the row becomes a scalar
(tag = column name, step = round) under ``<run folder>/tb`` via
``torch.utils.tensorboard.SummaryWriter``; needs the ``tensorboard`` package.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Mapping

LOGGERS = ("csv", "tensorboard")


def _logger_cfg(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return (cfg.get("logger") if hasattr(cfg, "get") else None) or {"name": "csv"}


def check_logger(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError (before training) for an unknown logger or a
    missing tensorboard package."""
    from ..experiment import ConfigError

    name = _logger_cfg(cfg).get("name", "csv")
    if name not in LOGGERS:
        raise ConfigError(f"logger.name='{name}' is not known; valid choices: {', '.join(LOGGERS)}")
    if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "logger=tensorboard needs the tensorboard package: pip install tensorboard (or use logger=csv)"
        )


class CsvLogger:
    """metrics.csv is written by the Recorder; nothing more to do."""

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        for k, v in row.items():
            if k == "round" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(float(v)):
                self.writer.add_scalar(k, float(v), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_logger(cfg: Mapping[str, Any], out_dir: str | Path) -> CsvLogger | TensorBoardLogger:
    check_logger(cfg)
    lc = _logger_cfg(cfg)
    if lc.get("name", "csv") == "tensorboard":
        return TensorBoardLogger(lc.get("log_dir") or Path(out_dir) / "tb")
    return CsvLogger()
