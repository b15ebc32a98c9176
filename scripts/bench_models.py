"""Measure every registered model side by side in one invocation: parameter
count, milliseconds per local SGD step (batch 32, through fedagg's own
``train_local``) and the wall time of one 100-client round on ``runtime=ray``
(every client does ``--round-steps`` local steps at batch 32; the round time
includes the server's test-set evaluation).

    PYTHONPATH=. .venv/bin/python scripts/bench_models.py [--models cnn,resnet18] [--no-ray]

Image models use mnist_5k (1x28x28) for the round and 3x32x32 inputs for the
step time; lstm uses a Shakespeare-shaped stand-in (80-token sequences). The
load average is printed next to the figures: on a shared machine, compare
ratios within one run, not absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedagg.task import models as M
from fedagg.task.train import train_local

ROUND_CLIENTS = 100


def step_ms(name: str, steps: int, threads: int) -> tuple[int, float]:
    torch.set_num_threads(threads)
    if name == "lstm":
        shape, classes = (80,), 80
        x = np.random.default_rng(0).integers(0, 80, (64, 80)).astype(np.float32)
    elif name == "cnn1d":
        shape, classes = (40,), 10
        x = np.random.default_rng(0).random((64, 40), dtype=np.float32)
    else:
        shape, classes = (3, 32, 32), 10
        x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, classes, 64)
    model = M.build_model(name, shape, classes)
    n_params = sum(p.numel() for p in model.parameters())
    train_local(model, x, y, steps=2, batch_size=32, lr=0.01)  # warm-up
    t = time.perf_counter()
    train_local(model, x, y, steps=steps, batch_size=32, lr=0.01)
    return n_params, (time.perf_counter() - t) / steps * 1000


def round_seconds(name: str, out: Path, standins: Path, steps: int) -> float:
    from hydra import compose, initialize_config_dir

    from fedagg.cli import CONF_DIR
    from fedagg.experiment import run

    if name == "lstm":
        data = ["dataset=shakespeare", f"dataset.path={standins / 'shakespeare'}", "partition=natural"]
    elif name == "cnn1d":
        data = ["dataset=mnist1d", "partition=iid"]
    else:
        data = ["dataset=mnist_5k", "partition=iid"]
    overrides = [*data, f"model={name}", f"num_clients={ROUND_CLIENTS}", "rounds=2", "runtime=ray",
                 f"train.steps={steps}", "train.batch_size=32", "participation=full"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=overrides)
    rows = run(cfg, out / name)
    return float(rows[-1]["round_seconds"])  # the second round: warm actors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(M.available()))
    ap.add_argument("--steps", type=int, default=20, help="timed local steps per model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the step time (fedagg's default: 1)")
    ap.add_argument("--round-steps", type=int, default=1, help="local steps per client in the 100-client round")
    ap.add_argument("--no-ray", action="store_true", help="skip the 100-client round")
    args = ap.parse_args()
    names = args.models.split(",")
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  torch threads: {args.threads}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        standins = Path(tmp) / "standins"
        if not args.no_ray and "lstm" in names:
            from fedagg.data.standins import save_leaf_standin

            save_leaf_standin("shakespeare", standins, roles=ROUND_CLIENTS, per_role=40)
        for name in names:
            n, ms = step_ms(name, args.steps, args.threads)
            sec = float("nan") if args.no_ray else round_seconds(name, Path(tmp), standins, args.round_steps)
            load = os.getloadavg()[0]
            rows.append((name, n, ms, sec, load))
            print(f"  {name}: {n} params, {ms:.1f} ms/step, round {sec:.2f} s  (load {load:.2f})", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"\n| model | parameters | ms / local step (batch 32, {args.threads} thread) | "
          f"{ROUND_CLIENTS}-client round on runtime=ray ({args.round_steps} step each) | load average (1 min) |")
    print("|---|---:|---:|---:|---:|")
    for name, n, ms, sec, load in rows:
        print(f"| `{name}` | {n:,} | {ms:.1f} | {sec:.1f} s | {load:.1f} |")


if __name__ == "__main__":
    main()
