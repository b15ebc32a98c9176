"""``fedagg resume=<run dir> [overrides]``: continue a run with its own config.

The command line is rewritten before Hydra sees it: the run's saved
overrides (``<run dir>/.hydra/overrides.yaml``) come first, then the ones
given now (which win for the same key), then ``hydra.run.dir=<run dir>`` so
the run continues in its own folder. Whether the result would change is
checked against the checkpoint's saved config afterwards (a refused key is
shown with its old and new values).
"""
from __future__ import annotations

from pathlib import Path

import yaml


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~x`` -> ``x``."""
    return override.split("=", 1)[0].lstrip("+~")


def resume_dir(argv: list[str]) -> str | None:
    for a in argv:
        if a.startswith("resume=") and a.split("=", 1)[1] not in ("", "null", "None"):
            return a.split("=", 1)[1]
    return None


def expand_resume(argv: list[str]) -> list[str]:
    """argv with the resumed run's saved overrides in front (see module doc).
    Unchanged when there is no ``resume=``, in multirun mode, or when the run
    folder has no saved overrides."""
    if "-m" in argv or "--multirun" in argv:
        return argv
    d = resume_dir(argv)
    if d is None:
        return argv
    saved_file = Path(d) / ".hydra" / "overrides.yaml"
    try:
        saved = yaml.safe_load(saved_file.read_text()) or []
    except (OSError, yaml.YAMLError):
        return argv
    flags = [a for a in argv if a.startswith("-")]
    given = [a for a in argv if not a.startswith("-")]
    now = {override_key(a) for a in given}
    keep = [str(o) for o in saved if override_key(str(o)) not in now | {"resume", "hydra.run.dir"}]
    run_dir = [] if "hydra.run.dir" in now else [f"hydra.run.dir={Path(d).resolve()}"]
    return flags + keep + given + run_dir
