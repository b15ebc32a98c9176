"""``fedagg resume=<run dir> [overrides]``: continue a run with its own config,
in its own folder.

The command line is rewritten before Hydra sees it: the run's saved
overrides (``<run dir>/.hydra/overrides.yaml``) come first, then the ones
given now (which win for the same key), then ``resume=`` and
``hydra.run.dir=`` set to the run folder's absolute path, so the run always
continues in place. Whether the result would change is checked against the
checkpoint's saved config before Hydra starts the job
(:mod:`fedagg.preflight`; a refused key is shown with its old and new values).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

_PLAIN = re.compile(r"[A-Za-z0-9_/.+-]+")  # characters a Hydra override value may hold unquoted


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~x`` -> ``x``."""
    return override.split("=", 1)[0].lstrip("+~")


def hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value: as is when plain, else quoted
    (``/a/b=c`` -> ``'/a/b=c'``; Hydra's escapes for quotes, the backslashes
    before them and ``${``)."""
    if _PLAIN.fullmatch(value):
        return value
    q = "'" if "'" not in value else '"'
    body = re.sub(r"(\\+)(?=" + q + "|$)", lambda m: m.group(1) * 2, value)
    return q + body.replace(q, "\\" + q).replace("${", "\\${") + q


def resume_command(run_dir: Path) -> str:
    """The shell command that resumes ``run_dir`` (works verbatim, whatever the folder is called)."""
    import shlex

    return f"fedagg {shlex.quote('resume=' + hydra_quote(str(Path(run_dir).resolve())))}"


def _value(override: str) -> str:
    """An override's value with Hydra's quoting undone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        v = OverridesParser.create().parse_override(override).value()
    except Exception:  # noqa: BLE001 - malformed: Hydra reports it when it parses the command line
        v = override.split("=", 1)[1]
    return str(v)


def resume_dir(argv: list[str]) -> str | None:
    for a in argv:
        if a.startswith("resume="):
            d = _value(a)
            if d not in ("", "null", "None"):
                return d
    return None


def expand_resume(argv: list[str]) -> list[str]:
    """argv with the resumed run's saved overrides in front, ``resume=`` and
    ``hydra.run.dir=`` set to the run folder (see module doc). Unchanged when
    there is no ``resume=`` and in multirun mode."""
    if "-m" in argv or "--multirun" in argv:
        return argv
    d = resume_dir(argv)
    if d is None:
        return argv
    run = Path(d).expanduser().resolve()
    try:
        saved = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        saved = []  # a run made without the CLI: only the folder is known
    flags = [a for a in argv if a.startswith("-")]
    given = [a for a in argv if not a.startswith("-") and override_key(a) != "resume"]
    now = {override_key(a) for a in given}
    keep = [str(o) for o in saved if override_key(str(o)) not in now | {"resume", "hydra.run.dir"}]
    place = hydra_quote(str(run))
    run_dir = [] if "hydra.run.dir" in now else [f"hydra.run.dir={place}"]
    return flags + keep + given + [f"resume={place}"] + run_dir
