"""Optional metric loggers called once per round with the metrics.csv row.

``logger=csv`` (default): nothing beyond metrics.csv / rounds.jsonl.
``logger=tensorboard``: every numeric column of the row becomes a scalar
(tag = column name, step = round) under ``<run folder>/tb`` (or
``logger.log_dir``) via ``torch.utils.tensorboard.SummaryWriter``; needs the
``tensorboard`` package.

A logger is a class registered here: ``__init__(out_dir, **options)``,
``log(row)`` and ``close()``; its options are the ``logger.*`` keys.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from ..errors import ConfigError
from ..registry import Registry


class MetricLogger(Protocol):
    def log(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


_LOGGERS: Registry[Callable[..., MetricLogger]] = Registry("logger.name")  # classes: (out_dir, **options)
register_logger = _LOGGERS.register
available = _LOGGERS.available
get = _LOGGERS.get


@register_logger("csv")
class CsvLogger:
    """metrics.csv is written by the Recorder; nothing more to do."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@register_logger("tensorboard")
class TensorBoardLogger:
    def __init__(self, out_dir: str | Path, log_dir: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir) if log_dir else Path(out_dir) / "tb"
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


def check_logger(section: Mapping[str, Any]) -> None:
    """Raise ConfigError (before training) for an unknown logger or a
    missing tensorboard package."""
    name = str(section.get("name", ""))
    if name not in _LOGGERS:
        raise ConfigError(f"logger.name='{name}' is not known; valid choices: {', '.join(available())}")
    if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "logger=tensorboard needs the tensorboard package: pip install tensorboard (or use logger=csv)"
        )


def make_logger(section: Mapping[str, Any], out_dir: str | Path) -> MetricLogger:
    check_logger(section)
    opts = {k: v for k, v in section.items() if k != "name"}
    return get(str(section["name"]))(out_dir, **opts)
