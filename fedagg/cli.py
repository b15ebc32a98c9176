"""Hydra entry point: ``fedagg [overrides]`` runs one experiment,
``fedagg -m k=a,b ...`` a sweep. Each run writes into its Hydra output
folder: config.yaml, metrics.csv, rounds.jsonl, model.pt, accuracy.png and
status.json (completed / failed, with the error).

A config that cannot work -- Hydra refusing an override or a group choice,
or :func:`fedagg.config.load` refusing a value -- ends the command with one
line (``config error: ...``) and exit status 2, before anything starts.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .config import CONF_DIR, load, one_line
from .errors import ConfigError

log = logging.getLogger("fedagg")
CONFIG_EXIT = 2


def _quiet_third_party() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler: no doubled lines


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def _main(raw: DictConfig) -> float | None:
    from .experiment import run
    from .sweep import prepare_job

    _quiet_third_party()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    multirun = hc.mode.name == "MULTIRUN"
    status = {"status": "running", "started": time.time()}
    resume = raw.resume
    same_dir = bool(resume) and Path(str(resume)).resolve() == out.resolve()
    if not same_dir:
        (out / "status.json").write_text(json.dumps(status))
    try:
        cfg = load(raw)
        prepare_job(cfg, hc)  # CPU share per parallel sweep job
        rows = run(cfg, out)
    except ConfigError as e:
        status.update(status="failed", error=f"config error: {e}")
        if not same_dir:  # a refused resume never overwrites the run it was asked to resume
            (out / "status.json").write_text(json.dumps(status))
        log.error("config error: %s", e)
        if multirun:
            return None
        sys.exit(CONFIG_EXIT)
    except Exception as e:  # noqa: BLE001 - a failed job is recorded, the sweep goes on
        status.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        (out / "status.json").write_text(json.dumps(status))
        log.error("run failed: %s: %s", type(e).__name__, e)
        if multirun:
            return None
        raise
    final = rows[-1]["test_accuracy"] if rows else None
    status.update(status="completed", finished=time.time(), final_test_accuracy=final)
    (out / "status.json").write_text(json.dumps(status))
    return final


def main() -> None:
    # Hydra's own handler prints composition errors over several lines and exits 1;
    # let them reach us instead, and print them as one line with exit status 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _main()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"config error: {one_line(e)}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)


if __name__ == "__main__":
    main()
