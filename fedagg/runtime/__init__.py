"""Runtimes carry Messages between the ServerApp and the ClientApps:
``inprocess`` (tests), ``flower`` (Flower's simulation engine on Ray) and
``ray`` (a persistent Ray actor pool).

Each is registered by name under the same registry rule as every other
family; an entry returns the runtime function ``(server_app, exp, result)``
and imports its module only when picked (Ray is not imported for
``runtime=inprocess``).
"""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry

RuntimeFn = Callable[..., Any]
_RUNTIMES: Registry[Callable[[], RuntimeFn]] = Registry("runtime.name")
register_runtime = _RUNTIMES.register
available = _RUNTIMES.available


@register_runtime("inprocess")
def _inprocess() -> RuntimeFn:
    from .inprocess import run_inprocess

    return run_inprocess


@register_runtime("flower")
def _flower() -> RuntimeFn:
    from .flower_sim import run_flower

    return run_flower


@register_runtime("ray")
def _ray() -> RuntimeFn:
    from .ray_grid import run_ray

    return run_ray


def get_runtime(name: str) -> RuntimeFn:
    return _RUNTIMES.get(name)()
