#!/usr/bin/env python
"""Aggregation benchmark: FedAvg / FedAU / FedDisco / IDA over ``--updates``
client updates of a ``--params``-parameter float32 model, against the
memory-bandwidth bound: a plain numpy weighted sum over the same bytes
(one float32 accumulator, ``np.multiply``/``np.add`` with ``out=``).

    python scripts/bench_aggregation.py                  # 100 updates x 10M params
    python scripts/bench_aggregation.py --updates 20 --params 1000000 --repeat 2

An aggregator that is not importable yet is skipped with a note.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def make_updates(n: int, params: int, seed: int = 0):
    from fedagg.aggregators.base import ClientUpdate

    rng = np.random.default_rng(seed)
    # a few tensors, like a model: 4 layers
    sizes = [params // 2, params // 4, params // 4 - 1000, 1000]
    glob = {f"layer{i}.weight": rng.standard_normal(s, dtype=np.float32) for i, s in enumerate(sizes)}
    ups = []
    for k in range(n):
        p = {name: (v + 0.01 * rng.standard_normal(v.shape, dtype=np.float32)) for name, v in glob.items()}
        hist = rng.integers(1, 100, size=10)
        ups.append(ClientUpdate(client_id=k, params=p, num_examples=int(rng.integers(50, 500)), label_hist=hist,
                                train_loss=float(rng.uniform(0.1, 2)), train_accuracy=float(rng.uniform(0.3, 0.9))))
    return glob, ups


def numpy_bound(glob, ups):
    w = np.asarray([u.num_examples for u in ups], dtype=np.float32)
    w /= w.sum()
    out = {}
    for name, ref in glob.items():
        acc = np.zeros_like(ref)
        tmp = np.empty_like(ref)
        for wi, u in zip(w, ups):
            np.multiply(u.params[name], wi, out=tmp)
            np.add(acc, tmp, out=acc)
        out[name] = acc
    return out


def timed(fn, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--aggregators", default="fedavg,fedau,feddisco,ida")
    args = ap.parse_args()
    from fedagg import aggregators as agg
    from fedagg.aggregators.base import AggregatorContext, RoundInfo

    glob, ups = make_updates(args.updates, args.params)
    gb = args.updates * args.params * 4 / 1e9
    print(f"# bench_aggregation: {args.updates} updates x {args.params:,} float32 params = {gb:.1f} GB read per "
          f"aggregation; cores={os.cpu_count()}, load average={os.getloadavg()}")
    base = timed(lambda: numpy_bound(glob, ups), args.repeat)
    ref = numpy_bound(glob, ups)
    rows = [("numpy weighted sum (bound)", base, 1.0, "")]
    n = args.updates
    rnd = iter(range(1, 10**6))  # stateful rules (FedAU) need increasing rounds

    def info():
        return RoundInfo(next(rnd), n, tuple(range(n)), tuple(range(n)))
    for name in args.aggregators.split(","):
        try:
            a = agg.build(name, AggregatorContext(num_clients=n, num_classes=10, seed=0))
        except Exception as e:  # noqa: BLE001 - not written yet / needs options
            rows.append((name, float("nan"), float("nan"), f"skipped: {type(e).__name__}: {e}"))
            continue
        try:
            t = timed(lambda: a.apply(glob, ups, info()), args.repeat)
            out, _ = a.apply(glob, ups, info())
            note = ""
            if name == "fedavg":
                rel = max(float(np.max(np.abs(out[k] - ref[k])) / (np.max(np.abs(ref[k])) + 1e-12)) for k in ref)
                note = f"max rel. diff to the bound's result {rel:.1e}"
            rows.append((name, t, t / base, note))
        except Exception as e:  # noqa: BLE001
            rows.append((name, float("nan"), float("nan"), f"failed: {type(e).__name__}: {e}"))
    print("| aggregation | seconds | ratio to numpy bound | note |\n|---|---|---|---|")
    for name, t, r, note in rows:
        print(f"| {name} | {t:.3f} | {r:.2f} | {note} |")


if __name__ == "__main__":
    main()
