"""Sweeps: split the machine's CPUs between the jobs a Hydra launcher runs
side by side, so parallel jobs do not oversubscribe the cores.

Under ``hydra/launcher=joblib hydra.launcher.n_jobs=k`` every job gets
``runtime.num_cpus = max(1, cores // k)`` (the Ray cluster Flower starts for
that job), ``runtime.num_cpus_per_client`` is capped at that share (a client
asking for more CPUs than its cluster has would never be scheduled), and
torch's intra-op threads are set to the share (the in-process runtime and
server-side evaluation train in the job process itself). An explicit
``runtime.num_cpus=...`` on the command line is respected.

The Ray launcher (``hydra-ray-launcher``, not a dependency) is left alone: it
needs ``+hydra.launcher.ray.remote.num_cpus=0`` so a job task does not hold
the CPU its own Flower actors need.
"""
from __future__ import annotations

import logging
from typing import Any

from .config import Config, cores

log = logging.getLogger("fedagg")

JOBLIB_TARGET = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def available_cores() -> int:
    return cores()


def cpu_share(cores: int, n_jobs: int) -> int:
    """CPUs for one of ``n_jobs`` parallel jobs on ``cores`` cores (joblib's
    negative n_jobs: -1 = all cores, -2 = all but one, ...)."""
    cores = max(1, int(cores))
    n = int(n_jobs)
    if n < 0:
        n = max(1, cores + 1 + n)
    return max(1, cores // max(1, n))


def parallel_jobs(hydra_cfg: Any) -> int | None:
    """k when this job runs under the joblib launcher with n_jobs=k; None
    for the basic (sequential) launcher, a single run, or another launcher."""
    try:
        if hydra_cfg.mode.name != "MULTIRUN":
            return None
        launcher = hydra_cfg.launcher
        target = str(launcher.get("_target_", ""))
    except Exception:  # noqa: BLE001 - no Hydra context: nothing to split
        return None
    if "joblib" not in target.lower():
        return None
    n = launcher.get("n_jobs")
    return -1 if n is None else int(n)


def apply_cpu_budget(cfg: Config, hydra_cfg: Any = None, cores: int | None = None) -> int | None:
    """Give this job its share of the cores when it runs in parallel with
    others; returns the share (None when nothing was changed)."""
    if hydra_cfg is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            hydra_cfg = HydraConfig.get()
        except Exception:  # noqa: BLE001
            return None
    k = parallel_jobs(hydra_cfg)
    if k is None:
        return None
    cores = available_cores() if cores is None else int(cores)
    share = cpu_share(cores, k)
    rt = cfg.runtime
    if rt.num_cpus is None:
        rt.num_cpus = share
    elif rt.num_cpus > share:
        log.warning("runtime.num_cpus=%s set explicitly; %d jobs in parallel on %d cores oversubscribe",
                    rt.num_cpus, k, cores)
    if rt.num_cpus_per_client > rt.num_cpus:
        rt.num_cpus_per_client = float(rt.num_cpus)
    import torch

    torch.set_num_threads(rt.num_cpus)
    log.info("joblib n_jobs=%d on %d cores: this job uses runtime.num_cpus=%s", k, cores, rt.num_cpus)
    return share


def prepare_job(cfg: Config, hydra_cfg: Any = None) -> None:
    """Called by ``fedagg.experiment.run`` once the config is loaded: the CPU
    budget for parallel sweeps (nothing outside a Hydra sweep)."""
    apply_cpu_budget(cfg, hydra_cfg)
