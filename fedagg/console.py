"""What a person sees in the terminal: a progress bar with ETA when stderr is
a terminal (plain per-round lines in logs and CI), no third-party noise
(alembic's plugin INFO lines, Flower's deprecation banner for the simulation
engine, Ray's accelerator FutureWarning), and in a sweep every fedagg line
tagged with its job (``[job 3] round 2/5 | ...``), so the lines of jobs a
parallel launcher runs side by side can be told apart."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any, TextIO

from hydra.experimental.callback import Callback

log = logging.getLogger("fedagg")


class _DropDeprecationBanner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


def quiet_third_party() -> None:
    """Silence what a fedagg user cannot act on. Idempotent."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower's telemetry and update check: off unless set
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray's usage statistics: off unless set
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's FutureWarning about num_gpus=0
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "setup plugin alembic..." x7 per import
    flwr = logging.getLogger("flwr")
    flwr.propagate = False  # Flower logs through its own handler: no doubled lines
    if not any(isinstance(f, _DropDeprecationBanner) for f in flwr.filters):
        flwr.addFilter(_DropDeprecationBanner())  # run_simulation is how fedagg drives Flower's engine


class _JobTag(logging.Filter):
    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"{self.tag} {record.msg}"  # a logger's filters see each of its records once
        return True


def set_job_tag(tag: str | None) -> None:
    """Prefix every line the ``fedagg`` logger writes with ``tag`` (None: no prefix), replacing an earlier tag."""
    logger = logging.getLogger("fedagg")
    for f in [f for f in logger.filters if isinstance(f, _JobTag)]:
        logger.removeFilter(f)
    if tag:
        logger.addFilter(_JobTag(tag))


def job_tag(hydra_cfg: Any) -> str | None:
    """``[job N]`` (Hydra's job number, as in the job folder's name) in a multirun; None otherwise."""
    try:
        return f"[job {hydra_cfg.job.num}]" if hydra_cfg.mode.name == "MULTIRUN" else None
    except Exception:  # noqa: BLE001 - no Hydra job config: no tag
        return None


class JobTag(Callback):
    """Hydra callback (``hydra.callbacks.job_tag`` in conf/config.yaml): while
    a sweep job runs, in the process that runs it (a joblib worker, say), every
    fedagg line starts with ``[job N]``."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        set_job_tag(job_tag(config.hydra))

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        set_job_tag(None)


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    if os.environ.get("CI") or os.environ.get("FEDAGG_NO_PROGRESS"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A tqdm bar over the rounds with ETA and the last test accuracy, only
    on a terminal; the per-round log lines are printed above it. In logs and
    CI (not a terminal) it does nothing and the plain lines stay as they are."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = is_terminal(self.stream)
        self._bar: Any = None
        self._redirect: Any = None

    def begin(self, start_round: int, num_rounds: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])  # lines print above the bar
        self._redirect.__enter__()
        size = shutil.get_terminal_size((100, 24))  # a pty without a size reports 0 x 0: tqdm would hide the bar
        self._bar = tqdm(total=num_rounds, initial=start_round - 1, unit="round", file=self.stream,
                         ncols=size.columns if size.columns > 0 else 100, nrows=size.lines if size.lines > 0 else 24,
                         leave=True, desc="fedagg")

    def update(self, test_accuracy: float | None) -> None:
        if self._bar is None:
            return
        if test_accuracy is not None:
            self._bar.set_postfix_str(f"test_acc {test_accuracy:.4f}", refresh=False)
        self._bar.update(1)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
