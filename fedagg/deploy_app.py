"""The fedagg ServerApp for a real SuperLink (``flwr run . <connection>``).

The run config (``[tool.flwr.app.config]`` + ``flwr run --run-config``) has
two keys:

- ``overrides``: Hydra overrides as one string, e.g.
  ``"aggregator=feddisco rounds=2 num_clients=2 dataset=digits model=mlp"``,
  composed on ``fedagg/conf/`` (package data of the imported ``fedagg``;
  the FAB ships ``fedagg/conf/**/*.yaml`` for the same reason);
- ``out-dir``: where metrics.csv, rounds.jsonl, model.pt, config.yaml and
  status.json are written (a relative path resolves against the SuperLink
  process's working directory, so pass an absolute one).

The experiment body is the same ``server.run_server`` as in simulation (its
loop is the rule's Flower strategy, ``strategy.start``). Runtime
settings are irrelevant here (the SuperLink is the runtime): ``runtime`` is
forced to ``inprocess`` so Ray/GPU checks of the simulation runtimes do not
apply. A deployment must never wait forever for a vanished SuperNode, so
``server.round_timeout: null`` becomes ``DEFAULT_ROUND_TIMEOUT`` seconds.
The client-side ``dp.mode`` values are refused: the FAB's ClientApp is the
plain ``app``, without Flower's clipping mods.

The asynchronous modes (``server.mode=fedasync|fedbuff|fedfix``) run on real
time here, not on the virtual clock: ``server.concurrency`` jobs in flight
with ``grid.push_messages`` / ``grid.pull_messages``, each reply applied in
the order it arrives, ``sim_time_s`` = real seconds since the first dispatch
(:mod:`fedagg.flower.realtime_loop`; the config refuses a ``device_profile``,
``checkpoint.every`` and ``resume`` with them). A SuperNode is one client
(its ``partition-id``), so ``num_clients`` is the number of SuperNodes.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger("fedagg")

DEFAULT_ROUND_TIMEOUT = 300.0

app = ServerApp()


def conf_dir() -> Path:
    """``fedagg/conf/`` of the imported fedagg package (the installed copy, or
    the FAB's when the app runs from $FLWR_HOME/apps/...)."""
    from .config import CONF_DIR  # the one place that says where conf/ is

    d = Path(CONF_DIR)
    if not (d / "config.yaml").is_file():
        raise FileNotFoundError(
            f"fedagg config dir not found at {d}; install fedagg (pip install .) "
            "or build the FAB with fedagg/conf/**/*.yaml included"
        )
    return d


def compose_config(overrides: str | list[str]) -> Any:
    """Compose conf/config.yaml with Hydra overrides (a string is split like a
    shell) into the typed, checked config."""
    from .config import compose

    ov = shlex.split(overrides) if isinstance(overrides, str) else list(overrides)
    cfg = compose([*ov, "runtime=inprocess"], config_dir=str(conf_dir()), deployment=True)
    from .dp import CLIENT_MODES
    from .errors import ConfigError

    if cfg.dp.mode in CLIENT_MODES:
        raise ConfigError(f"dp.mode={cfg.dp.mode} is not available in a deployment: the SuperNodes' ClientApp "
                          "(fedagg.flower.client_app:app) runs no clipping mod; use dp.mode=server_fixed or "
                          "server_adaptive")
    if cfg.server.round_timeout is None:
        cfg.server.round_timeout = DEFAULT_ROUND_TIMEOUT
    return cfg


def _setup_logging() -> None:
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(levelname)s fedagg: %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO)


@app.main()
def main(grid: Grid, context: Context) -> None:
    from .experiment import build, write_config
    from .server import run_server

    _setup_logging()
    rc = context.run_config
    overrides = str(rc.get("overrides", "") or "")
    out = Path(str(rc.get("out-dir", "deploy-results") or "deploy-results")).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, Any] = {"status": "running", "started": time.time(), "overrides": overrides,
                              "run_id": context.run_id}
    (out / "status.json").write_text(json.dumps(status))
    log.info("fedagg ServerApp: overrides=%r out-dir=%s", overrides, out)
    try:
        cfg = compose_config(overrides)
        exp = build(cfg, deployment=True)
        write_config(exp.cfg, out)
        rows = run_server(grid, exp, out, real_time=True)
        if exp.outcome is not None:  # no update accepted for server.max_failed_rounds rounds, or in any round
            raise exp.outcome
    except Exception as e:
        status.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        (out / "status.json").write_text(json.dumps(status))
        log.error("run failed: %s: %s", type(e).__name__, e)
        raise  # the SuperLink marks the run finished:failed
    final = rows[-1]["test_accuracy"] if rows else None
    status.update(status="completed", finished=time.time(), rounds=len(rows), final_test_accuracy=final)
    (out / "status.json").write_text(json.dumps(status))
    log.info("fedagg ServerApp done: %d rounds, final test accuracy %s, results in %s", len(rows), final, out)
