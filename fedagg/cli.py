"""Hydra entry point: ``fedagg [overrides]`` runs one experiment,
``fedagg -m k=a,b ...`` a sweep. Each run writes into its Hydra output
folder, named by a short slug of its overrides (``aggregator-fedau_rounds-5``;
the overrides themselves are in ``.hydra/overrides.yaml``): config.yaml,
metrics.csv, rounds.jsonl, model.pt, accuracy.png and status.json
(completed / failed / interrupted).

A command that cannot work -- Hydra refusing an override or a group choice,
:func:`fedagg.config.load` refusing a value of any job of a sweep, a resume
its checkpoint refuses, an unwritable run folder -- ends with one line on
stderr (``config error: ...`` / ``resume error: ...``) and exit status 2,
before any job starts and without leaving a run folder (:mod:`fedagg.preflight`);
a value only the data can refuse ends its job the same way once the data is
loaded. A run without an accepted update for ``server.max_failed_rounds``
rounds (or in all of them) ends ``failed`` with exit status 1; SIGINT/SIGTERM
end it ``interrupted`` after the current round, or at once during start-up
(exit 130), with the command that resumes it. A sweep exits 1 with a
one-line count when any job failed. Re-running a sweep with the same
``hydra.sweep.dir`` skips its completed jobs and resumes the interrupted one.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .config import CONF_DIR, one_line
from .console import quiet_third_party
from .errors import ConfigError, ResumeError
from .outcomes import EXIT_FAILED, EXIT_INTERRUPTED
from .resume import hydra_quote, resume_command

log = logging.getLogger("fedagg")
CONFIG_EXIT = 2
_SWEEP: dict[str, Any] = {"interrupted": None, "failed": False, "job_started": False}
SWEEP_PARENT_ENV = "FEDAGG_SWEEP_PARENT"  # the pid of the command that runs a sweep
SWEEP_JOBS_ENV = "FEDAGG_SWEEP_JOBS"  # a file every job of a sweep appends its outcome to
NAME_CHARS = 100  # a longer run folder name is cut at an override's end and ends with a hash of all of them


def _top_level_items(overrides: str) -> list[str]:
    """``a=1,b=[1,2]`` -> ``["a=1", "b=[1,2]"]`` (commas inside brackets or quotes stay)."""
    items, depth, quote, cur = [], 0, "", ""
    for ch in overrides:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        cur += ch
    return [*items, cur] if cur else items


def run_folder_name(overrides: str, fallback: str) -> str:
    """``hydra.run.dir``'s last part: a short name of the run's overrides that
    a shell and a Hydra override take as it is -- ``aggregator=fedau,rounds=5``
    -> ``aggregator-fedau_rounds-5`` (letters, digits, ``.``, ``-``, ``_``);
    past NAME_CHARS characters it is cut at an override's end and ends with a
    hash of them all. ``fallback`` when there are none."""
    words = []
    for item in _top_level_items(overrides):
        key, _, value = item.lstrip("+~").partition("=")
        word = re.sub(r"[^A-Za-z0-9.-]+", "_", key) + ("-" + re.sub(r"[^A-Za-z0-9.-]+", "_", value) if value else "")
        words.append(re.sub(r"_+", "_", word).strip("_"))
    name = "_".join(w for w in words if w)
    if len(name) > NAME_CHARS:
        digest = hashlib.sha1(overrides.encode()).hexdigest()[:8]
        kept = ""
        for w in words:
            if len(kept) + len(w) + 1 > NAME_CHARS - len(digest) - 1:
                break
            kept = f"{kept}_{w}" if kept else w
        name = f"{kept}_{digest}" if kept else digest
    return name or fallback


OmegaConf.register_new_resolver("fedagg_run_name", run_folder_name, replace=True)


def _resume_hint(out: Path, multirun: bool) -> str:
    if multirun:
        args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
        sweep_dir = hydra_quote(str(out.resolve().parent))
        cmd = " ".join(["fedagg", *(shlex.quote(a) for a in args), shlex.quote(f"hydra.sweep.dir={sweep_dir}")])
        return f"re-run the same sweep to skip finished jobs and resume this one:\n  {cmd}"
    if (out / "checkpoint.pkl").exists():
        return f"resume with:\n  {resume_command(out)}"
    if not (out / "metrics.csv").exists():
        return "no round had finished, so there is nothing to resume: run the same command again"
    return "no checkpoint was written (checkpoint.every=0), so this run cannot be resumed; use checkpoint.every=k"


def _job_ended(outcome: str) -> None:
    """Append this sweep job's outcome (completed / failed / interrupted) for the sweep's summary."""
    path = os.environ.get(SWEEP_JOBS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(outcome + "\n")


def _remove_new_folder(out: Path, made_by_hydra: set[str]) -> None:
    """A run refused before it started leaves no folder: remove what Hydra wrote
    into the new one (``.hydra/``, the job log), the folder once empty, and the
    empty folders above it up to ./outputs."""
    for name in made_by_hydra:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for h in logging.getLogger().handlers[:]:  # the job log's handler holds the removed file
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == out.resolve():
            logging.getLogger().removeHandler(h)
            h.close()
    stop = (Path.cwd() / "outputs").resolve()
    for d in [out.resolve(), *out.resolve().parents]:
        if d != out.resolve() and d != stop and stop not in d.parents:
            break
        try:
            d.rmdir()
        except OSError:
            break


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def _main(raw: DictConfig) -> float | None:
    from .outcomes import Interrupts, RunFailed, RunInterrupted, RunStatus, read_status, sweep_stop

    _SWEEP["job_started"] = True
    quiet_third_party()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    made_by_hydra = {".hydra", f"{hc.job.name}.log"}
    new_folder = {p.name for p in out.iterdir()} <= made_by_hydra
    if multirun:
        _stop_sweep_on_sigint_between_jobs()
        if _SWEEP["interrupted"] or sweep_stop():  # the sweep was interrupted: later jobs wait for the re-run
            return None
        before = read_status(out)
        if before.get("status") == "completed":
            log.info("job %s: completed earlier, skipped", out.name)
            _job_ended("completed")
            return before.get("final_test_accuracy")
        if before.get("status") in ("interrupted", "running") and (out / "checkpoint.pkl").exists() and not raw.resume:
            log.info("job %s: resuming from its checkpoint", out.name)
            with open_dict(raw):
                raw.resume = str(out)
    same_dir = bool(raw.resume) and Path(str(raw.resume)).resolve() == out.resolve()
    try:
        with Interrupts(startup=True):  # before round 1 a signal stops the run at once
            from .experiment import run  # torch and the rest: seconds

            rows = run(raw, out)
    except RunFailed as e:
        log.error("run failed: %s", e)
        _SWEEP["failed"] = True
        _job_ended("failed")
        return None
    except (RunInterrupted, KeyboardInterrupt) as e:
        last = e.last_round if isinstance(e, RunInterrupted) else None
        where = f"after round {last}" if last is not None else (str(e) or "in the middle of a round")
        if not read_status(out):  # stopped before the run wrote its status
            RunStatus(out).interrupted(None)
        log.warning("interrupted %s; %s", where, _resume_hint(out, multirun))
        _SWEEP["interrupted"] = str(out)
        _job_ended("interrupted")
        return None
    except ConfigError as e:  # a value only the data could refuse, or (a sweep job resuming) its checkpoint
        said = f"{'resume' if isinstance(e.__cause__, ResumeError) else 'config'} error: {e}"
        print(said, file=sys.stderr, flush=True)
        if multirun:
            if not same_dir:  # a refused resume never overwrites the run it was asked to resume
                RunStatus(out).failed(said)
            _job_ended("failed")
            return None
        if new_folder:
            _remove_new_folder(out, made_by_hydra)
        sys.exit(CONFIG_EXIT)
    except Exception as e:  # noqa: BLE001 - a failed job is recorded (status.json), the sweep goes on
        log.error("run failed: %s: %s", type(e).__name__, e)
        if multirun:
            _job_ended("failed")
            return None
        raise
    _job_ended("completed")
    return rows[-1]["test_accuracy"] if rows else None


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
    the first signal lets running jobs finish their round, a second aborts. Every job appends
    its outcome to a second shared file; a sweep with failed jobs says how many (exit 1)."""
    import tempfile

    from .outcomes import SWEEP_STOP_ENV, Interrupts, sweep_stop

    tag = f"{os.getpid()}-{time.time_ns()}"
    stop = Path(tempfile.gettempdir()) / f"fedagg-sweep-stop-{tag}"
    jobs = Path(tempfile.gettempdir()) / f"fedagg-sweep-jobs-{tag}"
    os.environ[SWEEP_STOP_ENV], os.environ[SWEEP_PARENT_ENV] = str(stop), str(os.getpid())
    os.environ[SWEEP_JOBS_ENV] = str(jobs)
    try:
        with Interrupts(on_first=_say_sweep_stops):
            _main()
        if sweep_stop():
            _SWEEP["interrupted"] = _SWEEP["interrupted"] or "stopped"
        outcomes = jobs.read_text().split() if jobs.exists() else []
    finally:
        stop.unlink(missing_ok=True)
        jobs.unlink(missing_ok=True)
    failed = outcomes.count("failed")
    if failed:
        print(f"sweep: {failed} of {len(outcomes)} jobs failed (each job's status.json says why)",
              file=sys.stderr, flush=True)
        _SWEEP["failed"] = True


def main() -> None:
    from .help import help_text, version
    from .outcomes import interrupt_with_subclass
    from .preflight import check
    from .resume import expand_resume

    argv = sys.argv[1:]
    if "--version" in argv:
        print(f"fedagg {version()}")
        return
    if "--help" in argv or "-h" in argv:
        print(help_text(CONF_DIR))
        return
    multirun = "-m" in argv or "--multirun" in argv
    interrupt_with_subclass()
    _SWEEP.update(interrupted=None, failed=False, job_started=False)
    # Hydra's own handler prints composition errors over several lines and exits 1;
    # let them reach us instead, and print them as one line with exit status 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        argv = expand_resume(argv)
        sys.argv = [sys.argv[0], *argv]
        problems = check(argv)  # every job's config, a resume's checkpoint: before any job starts
        if problems:
            print("\n".join(problems), file=sys.stderr)
            sys.exit(CONFIG_EXIT)
        quiet_third_party()
        if multirun:
            _sweep()
        else:
            _main()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"config error: {one_line(e)}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except OSError as e:
        if _SWEEP["job_started"]:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"config error: cannot create the run folder {where}{e.strerror or e}; point "
              f"{'hydra.sweep.dir' if multirun else 'hydra.run.dir'} at a folder you can write to", file=sys.stderr)
        sys.exit(CONFIG_EXIT)
    except KeyboardInterrupt:  # a second signal outside a run (Hydra set-up, the launcher)
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if _SWEEP["interrupted"]:
        sys.exit(EXIT_INTERRUPTED)
    if _SWEEP["failed"]:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
