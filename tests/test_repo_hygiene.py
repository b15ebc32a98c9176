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


# --------------------------------------------------------------------------- traffic stays on this machine
IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w.])")
# Lines that may name another address because they only document one (nothing runs them here).
ADDRESS_ALLOWED = {
    ("scripts/make_certs.sh", "#   scripts/make_certs.sh certs IP:10.0.0.5 DNS:superlink.example.org"),  # usage
}


def addresses_beyond_loopback(text: str) -> list[str]:
    """The IPv4 literals outside 127.0.0.0/8 in ``text`` (``0.0.0.0`` included:
    as a target it is this host's every interface, as a bind address it opens
    a test's server to the network)."""
    return [m.group(0) for m in IPV4.finditer(text)
            if all(int(p) <= 255 for p in m.groups()) and m.group(1) != "127"]


def code_files() -> list[str]:
    """What runs here: tracked Python, shell, config and CI files outside docs/
    and the README (documentation may show example addresses)."""
    return [f for f in tracked() if (f.endswith((".py", ".sh", ".yaml", ".yml", ".toml", ".cfg"))
                                     or f.startswith(".ci/")) and not f.startswith("docs/")
            and f != "tests/test_repo_hygiene.py"]


def test_the_address_scan_finds_what_it_must():
    """The scan would have caught the black-holed host a Ray test once dialled."""
    old = 'run(compose(*SMALL, "runtime=ray", "runtime.address=10.255.255.1:6379", "runtime.connect_timeout=1"))'
    assert addresses_beyond_loopback(old) == ["10.255.255.1"]
    assert addresses_beyond_loopback("flower-superlink --host 0.0.0.0 --port 9093") == ["0.0.0.0"]
    assert addresses_beyond_loopback("ip = '192.168.1.20'; dns = 8.8.8.8") == ["192.168.1.20", "8.8.8.8"]
    assert addresses_beyond_loopback("bind 127.0.0.1:0, connect 127.5.0.1; flwr==1.41.0; v1.2.3.4.5") == []


def test_no_code_names_an_address_beyond_loopback():
    """Tests, scripts, configs and CI talk only to 127.0.0.0/8: no IPv4 literal
    outside it in any file that runs here, except the listed documentation lines."""
    assert "tests/test_ray_runtime.py" in code_files() and ".ci/run" in code_files()
    bad = []
    for f in code_files():
        for n, line in enumerate((ROOT / f).read_text().splitlines(), 1):
            if addresses_beyond_loopback(line) and (f, line.strip()) not in ADDRESS_ALLOWED:
                bad.append(f"{f}:{n}: {line.strip()[:120]}")
    assert not bad, "\n".join(bad)


def test_the_suite_refuses_traffic_beyond_loopback():
    """tests/conftest.py stops this process from resolving a remote name or
    dialling an address outside 127.0.0.0/8 (a test that needs a silent peer
    makes one on 127.0.0.1: fedagg_testing.silent_peer)."""
    import socket

    import pytest

    # without the guard the calls below would send: check it is installed before making them
    assert all(getattr(socket.socket, n).__qualname__.startswith("_guard.") for n in ("connect", "sendto"))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError, match="127.0.0.0/8"):
            udp.connect(("10.255.255.1", 6379))
        with pytest.raises(OSError, match="127.0.0.0/8"):
            udp.sendto(b"x", ("8.8.8.8", 53))
        with pytest.raises(OSError, match="127.0.0.0/8"):
            socket.create_connection(("huggingface.co", 443), timeout=1)
        udp.connect(("127.0.0.1", 9))  # loopback is fine
    finally:
        udp.close()
