"""Measure the driver's client-state store (fedagg/runtime/state_store.py) at scale, without training:
``--clients`` states of the 62,006-parameter CNN (``model=cnn`` on 3x32x32, float32) put into a store with
a ``--memory-mb`` budget (the rest spills to a sqlite file in a temporary folder), then every 97th read back
and checked bitwise. Prints the split memory/file, the file size, ms per put and per get, and the peak RSS.

    PYTHONPATH=. .venv/bin/python scripts/bench_client_state.py --clients 10000 --memory-mb 1024
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fedagg.runtime.state_store import SPILL_NAME, ClientStateStore
from fedagg.task.models import build_model
from fedagg.task.train import get_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--memory-mb", type=float, default=1024.0)
    args = ap.parse_args()
    model = build_model("cnn", (3, 32, 32), 10)
    names = [n for n, _ in model.named_parameters()]
    params = get_params(model)
    each = sum(params[n].nbytes for n in names)
    folder = Path(tempfile.mkdtemp(prefix="fedagg_state_"))
    try:
        store = ClientStateStore(int(args.memory_mb * 2**20), folder / SPILL_NAME)
        r = np.random.default_rng(0)
        base = {n: r.normal(size=params[n].shape).astype(np.float32) for n in names}
        t0 = time.perf_counter()
        for c in range(args.clients):
            store.put(c, {n: base[n] + np.float32(c) for n in names})
        t1 = time.perf_counter()
        probe = range(0, args.clients, 97)
        ok = all(np.array_equal(store.get(c)[names[0]], base[names[0]] + np.float32(c)) for c in probe)
        t2 = time.perf_counter()
        size = (folder / SPILL_NAME).stat().st_size if (folder / SPILL_NAME).exists() else 0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"clients={args.clients} state={each} B each ({args.clients * each / 2**30:.3f} GiB) "
              f"budget={args.memory_mb:g} MB: {len(store) - len(store._on_disk)} in memory, "
              f"{len(store._on_disk)} in the file ({size / 2**30:.3f} GiB); put {1e3 * (t1 - t0) / args.clients:.2f} "
              f"ms/client, get {1e3 * (t2 - t1) / len(probe):.2f} ms/client; peak RSS {rss:.0f} MiB; bitwise {ok}")
        store.close()
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
