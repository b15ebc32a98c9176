#!/usr/bin/env python
"""GPU check: what the vectorised cohorts and the Ray runtime do on one CUDA device. One table out.

Measures, on ``--device`` (default cuda):

1. training alone, one by one (``train_local``) vs stacked (``train_cohort``,
   chunks of 10), for ``cnn`` (28x28), ``cnn1d`` (MNIST-1D) and ``resnet20``
   with GroupNorm (32x32), at 10 and 100 clients per round: seconds, the
   stacked/one-by-one ratio and the peak device memory of each;
2. ``runtime=ray`` with ``runtime.num_gpus_per_client=0.25`` (4 actors sharing
   the device), ``cnn1d`` on MNIST-1D, 100 clients per round, 3 rounds, with
   ``vectorize=false`` and ``vectorize=auto``: the median steady round;
3. CPU-vs-device agreement of one round (``cnn1d``, 10 clients, in-process):
   the largest difference of the global model's parameters (pass: <= 1e-4).

``runtime.vectorize=auto`` leaves 2-D convolutions client by client only on
CPU; on CUDA it stacks them. Section 1 is the measurement that decides
whether that is right (a stacked/one-by-one ratio < 1 for ``cnn`` says yes).

    python scripts/gpu_check.py                    # on the GPU: under 8 minutes
    bash scripts/gpu_check.sh                      # the same, with nvidia-smi before and after
    python scripts/gpu_check.py --device cpu --quick   # a smoke test of the script itself (no GPU)

``--quick`` shrinks every workload (a few clients, tiny samples, 2 rounds,
no resnet20 at 100 clients) so the whole script runs in a couple of minutes on
CPU; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

MODELS = {"cnn": ((1, 28, 28), {}), "cnn1d": ((40,), {}), "resnet20": ((3, 32, 32), {"norm": "group"})}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def training(model_name: str, clients: int, samples: int, device: str, repeats: int) -> dict:
    """One by one vs stacked, on ``device``: median seconds and peak memory of each."""
    import numpy as np

    from fedagg.task.cohort import Member, train_cohort, unsupported_reason
    from fedagg.task.models import build_model
    from fedagg.task.train import get_params, set_params, train_local

    shape, opts = MODELS[model_name]
    model = build_model(model_name, shape, 10, **opts)
    start = get_params(model)
    g = np.random.default_rng(0)
    data = [(g.normal(size=(samples, *shape)).astype(np.float32), g.integers(0, 10, samples)) for _ in range(clients)]
    members = [Member(c, x, y, start) for c, (x, y) in enumerate(data)]
    why = unsupported_reason(model, input_shape=shape)

    def one_by_one() -> None:
        for c, (x, y) in enumerate(data):
            set_params(model, start)
            train_local(model, x, y, epochs=1, batch_size=32, lr=0.05, momentum=0.0, seed=0, round=1, client=c,
                        device=device)
            get_params(model)
        _sync(device)

    def stacked() -> None:
        for s in range(0, clients, 10):
            train_cohort(model, members[s : s + 10], batch_size=32, lr=0.05, seed=0, round=1, device=device)
        _sync(device)

    out: dict = {"unsupported": why}
    for name, fn in (("one", one_by_one), ("stacked", stacked)):
        if name == "stacked" and why:
            continue
        fn()  # warm-up
        _peak_reset(device)
        secs = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            secs.append(time.perf_counter() - t)
        out[f"{name}_s"] = statistics.median(secs)
        out[f"{name}_mb"] = _peak_mb(device)
    return out


def _cfg(overrides: list[str]):  # noqa: ANN202
    from hydra import compose, initialize_config_dir

    from fedagg.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=overrides)


def ray_rounds(device: str, clients: int, rounds: int, vectorize: str) -> dict:
    """runtime=ray, 4 actors on the device (num_gpus_per_client=0.25 on CUDA): the median steady round."""
    from fedagg.experiment import run
    from fedagg.runtime import ray_grid

    gpu = device.startswith("cuda")
    ov = ["dataset=mnist1d", "model=cnn1d", f"num_clients={clients}", f"rounds={rounds}", "train.epochs=1",
          f"device={device}", "runtime=ray", "runtime.num_workers=4", f"runtime.vectorize={vectorize}",
          f"runtime.num_gpus_per_client={0.25 if gpu else 0}", "runtime.num_cpus_per_client=1",
          f"runtime.num_cpus={max(4, os.cpu_count() or 1)}"]
    if gpu:
        ov.append("runtime.num_gpus=1")
    with tempfile.TemporaryDirectory(prefix="fedagg_gpu") as out:
        rows = run(_cfg(ov), out)
    ray_grid.shutdown()
    secs = [r["round_seconds"] for r in rows]
    return {"steady_s": statistics.median(secs[1:]) if len(secs) > 1 else secs[0], "rounds": secs}


def agreement(device: str, clients: int) -> float:
    """The largest |CPU - device| of the global model after one in-process round."""
    import torch

    from fedagg.experiment import run

    models = []
    for dev in ("cpu", device):
        ov = ["dataset=mnist1d", "model=cnn1d", f"num_clients={clients}", "rounds=1", "train.epochs=1",
              f"device={dev}", "runtime=inprocess"]
        with tempfile.TemporaryDirectory(prefix="fedagg_gpu") as out:
            run(_cfg(ov), out)
            models.append(torch.load(Path(out) / "model.pt"))
    a, b = models
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny workloads: a smoke test of the script (CPU)")
    ap.add_argument("--skip-ray", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {a.device}: CUDA is not available here (run with --device cpu --quick for a smoke test)")
    t0 = time.perf_counter()
    sizes = [4, 8] if a.quick else [10, 100]
    samples, repeats = (16, 1) if a.quick else (96, 3)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"# gpu_check: device={a.device} ({name}), torch {torch.__version__}, load average {os.getloadavg()}",
          flush=True)
    rows = ["| check | model | clients | one by one s | stacked s | ratio | peak MB (one / stacked) | note |",
            "|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        for c in sizes:
            if a.quick and m == "resnet20" and c > sizes[0]:
                continue
            r = training(m, c, samples, a.device, repeats)
            mem = "/".join("—" if r.get(k) is None else f"{r[k]:.0f}" for k in ("one_mb", "stacked_mb"))
            if r["unsupported"]:
                rows.append(f"| training | {m} | {c} | {r['one_s']:.3f} | — | — | {mem} | {r['unsupported']} |")
            else:
                rows.append(f"| training | {m} | {c} | {r['one_s']:.3f} | {r['stacked_s']:.3f} | "
                            f"{r['stacked_s'] / r['one_s']:.2f} | {mem} | |")
            print(rows[-1], flush=True)
    if not a.skip_ray:
        clients, rounds = (8, 2) if a.quick else (100, 3)
        per = {v: ray_rounds(a.device, clients, rounds, v) for v in ("false", "auto")}
        share = "num_gpus_per_client=0.25, 4 actors" if a.device.startswith("cuda") else "4 actors, CPU"
        rows.append(f"| ray steady round | cnn1d | {clients} | {per['false']['steady_s']:.3f} | "
                    f"{per['auto']['steady_s']:.3f} | {per['auto']['steady_s'] / per['false']['steady_s']:.2f} | — | "
                    f"{share}; vectorize=false vs auto |")
        print(rows[-1], flush=True)
    diff = agreement(a.device, 4 if a.quick else 10)
    rows.append(f"| cpu vs {a.device}, one round | cnn1d | {4 if a.quick else 10} | — | — | — | — | "
                f"max |diff| {diff:.2e} ({'pass' if diff <= 1e-4 else 'FAIL'}: <= 1e-4) |")
    print()
    print("\n".join(rows))
    print(f"# {time.perf_counter() - t0:.0f}s in all; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
