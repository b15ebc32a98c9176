"""What a user of the repository gets: no pointer to files they do not have,
no tracked file that .gitignore would hide, no dead code named in review."""
from __future__ import annotations

import re
import subprocess

from fedagg_testing import ROOT

# a path that leaves the repository, or an issue-tracker number: neither means anything to a user of the repository
FORBIDDEN = re.compile(r"\.\./\w|[Ii]ssue #?\d")
MD_REF = re.compile(r"[\w./-]*\w\.md\b")
WRITTEN_BY_FEDAGG = {"summary.md"}  # fedagg-report's output, named in docs but never tracked


def tracked() -> list[str]:
    p = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in p.stdout.splitlines() if f]


def test_no_pointer_outside_the_repository_or_to_a_missing_document():
    """Every document a tracked file names (``*.md``) is in the repository (or is fedagg-report's output); no path
    leaves the repository; no issue numbers."""
    files = tracked()
    bad = []
    for f in files:
        path = ROOT / f
        if f == "tests/test_repo_hygiene.py" or not path.is_file() or path.suffix in (".png", ".pt", ".pkl", ".npz",
                                                                                       ".parquet"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            missing = [m for m in MD_REF.findall(line) if m.rsplit("/", 1)[-1] not in WRITTEN_BY_FEDAGG
                       and not any(t == m or t.endswith("/" + m.lstrip("./")) for t in files)]
            if FORBIDDEN.search(line) or missing:
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
