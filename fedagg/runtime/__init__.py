"""Runtimes carry Messages between the ServerApp and the ClientApps:
``inprocess`` (tests), ``flower`` (Flower's simulation engine on Ray) and
``ray`` (a persistent Ray actor pool)."""
from __future__ import annotations

from typing import Any, Callable


def get_runtime(name: str) -> Callable[..., Any]:
    if name == "inprocess":
        from .inprocess import run_inprocess

        return run_inprocess
    if name == "flower":
        from .flower_sim import run_flower

        return run_flower
    if name == "ray":
        from .ray_grid import run_ray

        return run_ray
    raise ValueError(f"runtime.name='{name}' is not known; valid choices: inprocess, flower, ray")
