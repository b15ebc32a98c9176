"""Run one fedagg command and report wall time and the peak RSS of its whole
process tree (sampled every 0.2 s; Ray's raylet/GCS/workers included).

    python scripts/measure_run.py -- .venv/bin/fedagg runtime=ray
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_runtime import tree_rss  # noqa: E402


def main() -> None:
    cmd = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    t0 = time.perf_counter()
    env = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
           **os.environ}  # telemetry off unless the caller says otherwise
    p = subprocess.Popen(cmd, env=env)
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_rss(p.pid))
        time.sleep(0.2)
    print(f"exit {p.returncode} | wall {time.perf_counter() - t0:.1f}s | peak tree RSS {peak / 2**20:.0f} MiB")
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
