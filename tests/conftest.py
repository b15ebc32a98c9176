"""Environment for the whole suite; shared helpers are in fedagg_testing.py."""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FEDAGG_CACHE", str(Path.home() / ".cache" / "fedagg"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Nothing leaves this machine: no telemetry, no Hub probes, Ray on loopback (Ray maps 127.0.0.1 to the host's
# network address unless its single-machine mode is on; that covers ray.cluster_utils' nodes too).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _outside_loopback(address: object) -> bool:
    host = address[0] if isinstance(address, tuple) and address else None
    if not isinstance(host, str) or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return True  # a host name other than localhost: resolving it already asks the network


def _guard(name: str):
    real = getattr(socket.socket, name)

    def guarded(self, *args):
        address = args[-1]
        if self.family in (socket.AF_INET, socket.AF_INET6) and _outside_loopback(address):
            raise OSError(f"test traffic must stay on 127.0.0.0/8: socket.{name}({address!r}) refused by "
                          "tests/conftest.py (make the peer yourself on 127.0.0.1)")
        return real(self, *args)

    return guarded


_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name not in ("localhost", socket.gethostname()) and _outside_loopback((name,)):
        try:
            ipaddress.ip_address(name.split("%", 1)[0])  # a literal: connect() decides
        except ValueError:
            raise OSError(f"test traffic must stay on 127.0.0.0/8: resolving {name!r} (a DNS query) refused by "
                          "tests/conftest.py") from None
    return _real_getaddrinfo(host, *args, **kwargs)


# This test process itself never resolves a remote name, opens a connection or sends a datagram beyond loopback.
for _name in ("connect", "connect_ex", "sendto"):
    setattr(socket.socket, _name, _guard(_name))
socket.getaddrinfo = _getaddrinfo
