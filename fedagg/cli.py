"""Hydra entry point: ``fedagg [overrides]`` runs one experiment,
``fedagg -m k=a,b ...`` a sweep. Each run writes into its Hydra output
folder: config.yaml, metrics.csv, rounds.jsonl, model.pt, accuracy.png and
status.json (completed / failed / interrupted).

A config that cannot work -- Hydra refusing an override or a group choice,
or :func:`fedagg.config.load` refusing a value -- ends the command with one
line (``config error: ...``) and exit status 2, before anything starts.
A run whose clients all fail for ``server.max_failed_rounds`` rounds ends
``failed`` with exit status 1; SIGINT/SIGTERM end it ``interrupted`` after
the current round (exit 130) with the command that resumes it. Re-running a
sweep with the same ``hydra.sweep.dir`` skips its completed jobs and resumes
the interrupted one.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .config import CONF_DIR, load, one_line
from .console import quiet_third_party
from .errors import ConfigError
from .outcomes import EXIT_FAILED, EXIT_INTERRUPTED

log = logging.getLogger("fedagg")
CONFIG_EXIT = 2
_SWEEP: dict[str, Any] = {"interrupted": None, "failed": False}
SWEEP_PARENT_ENV = "FEDAGG_SWEEP_PARENT"  # the pid of the command that runs a sweep


def run_folder_name(overrides: str, fallback: str) -> str:
    """``hydra.run.dir``'s last part: the run's overrides (``a=1,b=2``), made
    safe for a folder name and kept short; ``fallback`` when there are none."""
    name = re.sub(r"[^A-Za-z0-9=,.+_-]+", "_", overrides.replace("/", "_")).strip("_")[:150]
    return name or fallback


OmegaConf.register_new_resolver("fedagg_run_name", run_folder_name, replace=True)


def _resume_hint(out: Path, multirun: bool) -> str:
    if multirun:
        args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
        sweep_dir = out.resolve().parent
        cmd = " ".join(["fedagg", *(shlex.quote(a) for a in args), shlex.quote(f"hydra.sweep.dir={sweep_dir}")])
        return f"re-run the same sweep to skip finished jobs and resume this one:\n  {cmd}"
    if (out / "checkpoint.pkl").exists():
        return f"resume with:\n  fedagg resume={shlex.quote(str(out.resolve()))}"
    return "no checkpoint was written (checkpoint.every=0), so this run cannot be resumed; use checkpoint.every=k"


def _previous(out: Path) -> tuple[str | None, Any]:
    """(status, final accuracy) of an earlier attempt of this sweep job."""
    try:
        st = json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return None, None
    return st.get("status"), st.get("final_test_accuracy")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def _main(raw: DictConfig) -> float | None:
    from .experiment import run
    from .outcomes import Interrupts, RunFailed, RunInterrupted, sweep_stop
    from .sweep import prepare_job

    quiet_third_party()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    multirun = hc.mode.name == "MULTIRUN"
    if multirun:
        _stop_sweep_on_sigint_between_jobs()
        if _SWEEP["interrupted"] or sweep_stop():  # the sweep was interrupted: later jobs wait for the re-run
            return None
        before, final = _previous(out)
        if before == "completed":
            log.info("job %s: completed earlier, skipped", out.name)
            return final
        if before in ("interrupted", "running") and (out / "checkpoint.pkl").exists() and not raw.resume:
            log.info("job %s: resuming from its checkpoint", out.name)
            with open_dict(raw):
                raw.resume = str(out)
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, Any] = {"status": "running", "started": time.time()}
    resume = raw.resume
    same_dir = bool(resume) and Path(str(resume)).resolve() == out.resolve()
    if not same_dir:
        (out / "status.json").write_text(json.dumps(status))
    else:
        try:
            status["started"] = json.loads((out / "status.json").read_text()).get("started", status["started"])
        except (OSError, ValueError):
            pass
    try:
        cfg = load(raw)
        prepare_job(cfg, hc)  # CPU share per parallel sweep job
        with Interrupts():
            rows = run(cfg, out)
    except RunFailed as e:
        status.update(status="failed", error=str(e), finished=time.time())
        (out / "status.json").write_text(json.dumps(status))
        log.error("run failed: %s", e)
        _SWEEP["failed"] = True
        return None
    except (RunInterrupted, KeyboardInterrupt) as e:
        last = e.last_round if isinstance(e, RunInterrupted) else None
        status.update(status="interrupted", finished=time.time(), last_round=last)
        (out / "status.json").write_text(json.dumps(status))
        where = f"after round {last}" if last is not None else "in the middle of a round (second signal)"
        log.warning("interrupted %s; %s", where, _resume_hint(out, multirun))
        _SWEEP["interrupted"] = str(out)
        return None
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


def _say_sweep_stops(name: str) -> None:
    from .outcomes import request_sweep_stop

    request_sweep_stop(name)
    print(f"\n{name}: running jobs finish their current round, later jobs are not started "
          "(press Ctrl-C again to abort)", file=sys.stderr, flush=True)


def _stop_sweep_on_sigint_between_jobs() -> None:
    """In a job process of a parallel sweep (not the command's own process), a SIGINT that
    arrives between jobs stops the sweep instead of killing the process (jobs install their own)."""
    import signal
    import threading

    from .outcomes import request_sweep_stop

    parent = os.environ.get(SWEEP_PARENT_ENV)
    if parent is None or parent == str(os.getpid()) or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, lambda signum, frame: request_sweep_stop("SIGINT"))


def _sweep() -> None:
    """Run a multirun with a stop file its job processes share (fedagg.outcomes.sweep_stop):
    the first signal lets running jobs finish their round, a second aborts."""
    import tempfile

    from .outcomes import SWEEP_STOP_ENV, Interrupts, sweep_stop

    stop = Path(tempfile.gettempdir()) / f"fedagg-sweep-stop-{os.getpid()}-{time.time_ns()}"
    os.environ[SWEEP_STOP_ENV], os.environ[SWEEP_PARENT_ENV] = str(stop), str(os.getpid())
    try:
        with Interrupts(on_first=_say_sweep_stops):
            _main()
        if sweep_stop():
            _SWEEP["interrupted"] = _SWEEP["interrupted"] or "stopped"
    finally:
        stop.unlink(missing_ok=True)


def main() -> None:
    from .help import help_text, version
    from .resume import expand_resume

    argv = sys.argv[1:]
    if "--version" in argv:
        print(f"fedagg {version()}")
        return
    if "--help" in argv or "-h" in argv:
        print(help_text(CONF_DIR))
        return
    sys.argv = [sys.argv[0], *expand_resume(argv)]
    quiet_third_party()
    # Hydra's own handler prints composition errors over several lines and exits 1;
    # let them reach us instead, and print them as one line with exit status 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if "-m" in argv or "--multirun" in argv:
            _sweep()
        else:
            _main()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"config error: {one_line(e)}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except KeyboardInterrupt:  # a second signal outside a run (Hydra set-up, the launcher)
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if _SWEEP["interrupted"]:
        sys.exit(EXIT_INTERRUPTED)
    if _SWEEP["failed"] and "-m" not in argv and "--multirun" not in argv:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
