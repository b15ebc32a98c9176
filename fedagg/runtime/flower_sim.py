"""Flower's own simulation engine (``run_simulation`` on Ray).

Client resources come from the config: ``runtime.num_cpus_per_client`` and
``runtime.num_gpus_per_client`` (fractional GPUs let several ClientApps share
one device). ``run_simulation`` is deprecated in flwr 1.41 but is the only
in-process entry to the engine.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .ray_grid import loopback_ray, release_pool


def run_flower(server_app: Any, exp: Any, result: dict[str, Any]) -> None:
    from flwr.simulation import run_simulation

    from ..flower.client_app import for_dp_mode

    rt = exp.cfg.runtime
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if rt.address:
        init_args["address"] = rt.address
    else:
        init_args["num_cpus"] = int(rt.num_cpus or os.cpu_count() or 1)
        if rt.num_gpus is not None:
            init_args["num_gpus"] = rt.num_gpus
    backend_config = {
        "client_resources": {"num_cpus": rt.num_cpus_per_client, "num_gpus": rt.num_gpus_per_client},
        "init_args": init_args,
    }
    release_pool()  # an earlier runtime=ray job's actors would hold the CPUs Flower's actors wait for
    logging.getLogger("flwr").propagate = False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with loopback_ray(rt.address or None):  # Flower starts (or joins) Ray inside run_simulation
        run_simulation(
            server_app=server_app, client_app=for_dp_mode(exp.cfg.dp.mode), num_supernodes=exp.cfg.num_clients,
            backend_config=backend_config, verbose_logging=False,
        )
