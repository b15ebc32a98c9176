"""What ``fedagg`` checks before Hydra starts a job, so that a command that
cannot work ends with one line per problem (exit 2) and writes nothing -- no
run folder, nothing in the folder of a run it was asked to resume:

- the config of every job through the checks of :func:`fedagg.config.load`
  (composition, types, keys, every value's range): the single run's, or each
  job of a sweep -- under Hydra's basic sweeper the cross product of the
  command line and ``hydra.sweeper.params``, all before the first job starts
  (another sweeper, e.g. Optuna's, chooses its jobs as it goes: only the
  values it does not sweep are checked here);
- a resume: the checkpoint is readable, its config is the one given now, and
  rounds are left (:func:`fedagg.checkpoint.load_for_resume`).

What needs the data -- a partition or a noise option on that dataset, a
model that fits the data's shape, an Erdős–Rényi draw that isolates a node,
a FedDisco metric -- is checked when each job builds its experiment
(:func:`fedagg.experiment.build`), still before any runtime starts.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import CONF_DIR, load, one_line, to_dict
from .errors import ConfigError, ResumeError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def hydra_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line as Hydra's own parser reads it (``.overrides``, ``.multirun``, ``.cfg`` ...)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(argv))


def sweep_jobs(overrides: Sequence[str], sweeper: Any) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper will launch them (the
    hydra.* overrides first, as Hydra composes every job with them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    own = [_line(o) for o in parsed if o.is_hydra_override()]
    task = [_line(o) for o in parsed if not o.is_hydra_override()]
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides([*params, *task]), None)
    return [[*own, *job] for job in batch]


def _fixed(overrides: Sequence[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [_line(o) for o in OverridesParser.create().parse_overrides(list(overrides))
            if not o.is_sweep_override()]


def _line(override: Any) -> str:
    """The text of a parsed override (the parser always keeps it)."""
    assert override.input_line is not None
    return str(override.input_line)


def check(argv: Sequence[str]) -> list[str]:
    """The problems of this command line, one line each (``config error: ...``,
    ``resume error: ...``); empty when it may start. Commands that name their
    own config (``--config-dir``, ``--config-name``, ``--config-path``) and the
    ones that run nothing (``--info``, ``--shell-completion``) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = hydra_args(argv)
    if args.config_dir or args.config_name or args.config_path or args.info or args.shell_completion \
            or args.experimental_rerun or args.hydra_help:
        return []
    problems: list[str] = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            if args.multirun:
                base = compose("config", overrides=_fixed(args.overrides), return_hydra_config=True)
                sweeper = base.hydra.sweeper
                jobs = (sweep_jobs(args.overrides, sweeper) if sweeper.get("_target_") == BASIC_SWEEPER
                        else [_fixed(args.overrides)])
            else:
                jobs = [list(args.overrides)]
            for job in jobs:
                try:
                    cfg = load(compose("config", overrides=job))
                    if cfg.resume and not args.multirun:
                        from .checkpoint import load_for_resume

                        load_for_resume(Path(str(cfg.resume)), to_dict(cfg))
                except ResumeError as e:
                    problems.append(f"resume error: {e}")
                except ConfigError as e:
                    problems.append(f"config error: {e}")
                except (HydraException, OmegaConfBaseException) as e:
                    problems.append(f"config error: {one_line(e)}")
    except (HydraException, OmegaConfBaseException) as e:
        problems.append(f"config error: {one_line(e)}")
    finally:
        GlobalHydra.instance().clear()
    return list(dict.fromkeys(problems))  # a problem every job shares is said once
