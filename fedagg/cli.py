"""Hydra entry point: ``fedagg [overrides]`` runs one experiment,
``fedagg -m k=a,b ...`` a sweep. Each run writes into its Hydra output
folder: config.yaml, metrics.csv, rounds.jsonl, model.pt, accuracy.png and
status.json (completed / failed, with the error)."""
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
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("fedagg")


def _quiet_third_party() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").propagate = False  # FLOWER_NOTES §6: no doubled lines


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def _main(cfg: DictConfig) -> float | None:
    from .experiment import ConfigError, run

    _quiet_third_party()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    multirun = hc.mode.name == "MULTIRUN"
    status = {"status": "running", "started": time.time()}
    resume = cfg.get("resume")
    same_dir = bool(resume) and Path(resume).resolve() == out.resolve()
    if not same_dir:
        (out / "status.json").write_text(json.dumps(status))
    try:
        from .sweep import prepare_job  # issue 6: CPU share per parallel sweep job + logger check
        prepare_job(cfg, hc)
        rows = run(cfg, out)
    except ConfigError as e:
        status.update(status="failed", error=f"config error: {e}")
        if not same_dir:  # a refused resume never overwrites the run it was asked to resume
            (out / "status.json").write_text(json.dumps(status))
        log.error("config error: %s", e)
        if multirun:
            return None
        sys.exit(2)
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
    _main()


if __name__ == "__main__":
    main()
