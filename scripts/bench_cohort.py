#!/usr/bin/env python
"""The compute ceiling of vectorised cohorts: training alone, no FL machinery.

Times ``fedagg.task.cohort.train_cohort`` (the cohort as stacked models,
``--chunk`` clients at a time) against ``fedagg.task.train.train_local``
(the same clients one by one) in one process, alternating, on one torch
thread: ``--clients`` clients of ``--samples`` random samples each (MNIST-1D
signals, or 28x28 images for the image models), 1 local epoch of batch 32,
plain SGD, the same starting model. A runtime's steady round cannot be
faster than the stacked time (divided by the number of workers), so this is
the floor under ``bench_runtime.py``'s ratios.

    python scripts/bench_cohort.py --model mlp cnn1d --chunk 10 50 100
    python scripts/bench_cohort.py --model cnn lenet5 cnn_fedau --chunk 10   # 2-D CNNs on 28x28 inputs

The 2-D CNNs train slower stacked than one by one on CPU (grouped
convolutions), which is why ``runtime.vectorize=auto`` leaves them client by
client (``fedagg.task.cohort.slower_reason``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fedagg.task.cohort import Member, planned_steps, train_cohort
from fedagg.task.models import build_model
from fedagg.task.train import get_params, set_params, train_local


def input_shape(model_name: str) -> tuple[int, ...]:
    """MNIST-1D signals for the MLP and the 1-D CNN, MNIST-sized images (1, 28, 28) for the image models."""
    return (40,) if model_name in ("mlp", "cnn1d") else (1, 28, 28)


def measure(model_name: str, clients: int, samples: int, chunk: int, repeats: int) -> tuple[float, float]:
    """Equal random shards of ``samples`` each (the ceiling's definition): (one by one s, stacked s)."""
    shape = input_shape(model_name)
    g = np.random.default_rng(0)
    data = [(g.normal(size=(samples, *shape)).astype(np.float32), g.integers(0, 10, samples)) for _ in range(clients)]
    return measure_on(model_name, data, chunk, repeats)


def measure_on(model_name: str, data: list[tuple[np.ndarray, np.ndarray]], chunk: int,
               repeats: int) -> tuple[float, float]:
    """The clients ``data`` (one (x, y) each) trained one by one and stacked ``chunk`` at a time, in the
    runtime's chunk order (planned steps, then client id): (one by one s, stacked s), medians of ``repeats``."""
    model = build_model(model_name, tuple(data[0][0].shape[1:]), 10)
    start = get_params(model)
    members = [Member(c, x, y, start, epochs=1, steps=0, work_fraction=1.0) for c, (x, y) in enumerate(data)]
    members.sort(key=lambda m: (planned_steps(len(m.y), epochs=1, steps=0, batch_size=32, work_fraction=1.0), m.client))

    def one_by_one() -> None:
        for c, (x, y) in enumerate(data):
            set_params(model, start)
            train_local(model, x, y, epochs=1, steps=0, batch_size=32, lr=0.05, momentum=0.0, weight_decay=0.0,
                        seed=0, round=1, client=c)
            get_params(model)

    def stacked() -> None:
        for s in range(0, len(members), chunk):
            train_cohort(model, members[s : s + chunk], batch_size=32, lr=0.05, seed=0, round=1)

    one_by_one(), stacked()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        one_by_one()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        stacked()
        b.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["mlp", "cnn1d"])
    ap.add_argument("--chunk", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--samples", type=int, default=96, help="samples per client (MNIST-1D's 9,600 over 100)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | chunk | one by one s | stacked s | ratio |\n|---|---|---|---|---|")
    for m in a.model:
        for c in a.chunk:
            x, y = measure(m, a.clients, a.samples, c, a.repeats)
            print(f"| {m} | {c} | {x:.3f} | {y:.3f} | {y / x:.2f} |", flush=True)


if __name__ == "__main__":
    main()
