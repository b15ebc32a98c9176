"""What a user of the repository gets: no pointer to files they do not have,
no tracked file that .gitignore would hide, no dead code named in review."""
from __future__ import annotations

import re
import subprocess

from fedagg_testing import ROOT

FORBIDDEN = re.compile(r"\.\./shared|ALGORITHMS\.md|FLOWER_NOTES|[Ii]ssue #?\d")


def tracked() -> list[str]:
    p = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in p.stdout.splitlines() if f]


def test_no_reference_to_the_team_notes_or_issue_numbers():
    bad = []
    for f in tracked():
        path = ROOT / f
        if not path.is_file() or path.suffix in (".png", ".pt", ".pkl", ".npz", ".parquet"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line) and f != "tests/test_repo_hygiene.py":
                bad.append(f"{f}:{n}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_gitignore_hides_no_tracked_file():
    p = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "", p.stdout


def test_dead_code_stays_gone():
    src = {f: (ROOT / f).read_text() for f in tracked() if f.startswith("fedagg/") and f.endswith(".py")}
    for name in ("def _slug(", "SPEC_PREFIXES", "streaming =", "streaming:", "unittest.mock", "extra: dict"):
        assert not [f for f, s in src.items() if name in s], name
