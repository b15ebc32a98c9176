"""Compute heterogeneity and faults.

``plan(round, client) -> dict`` tells one client what the simulation does to
it this round; it is a pure function of (seed, round, client), so it does not
depend on scheduling order or worker count. Keys (all optional):
``epochs`` (int: local epochs this round), ``work_fraction`` (float in (0,1]:
a straggler's partial work), ``fault`` ("crash" | "dropout" | "deadline").
"""
from __future__ import annotations

from typing import Any, Callable

_MODELS: dict[str, Callable[..., "Heterogeneity"]] = {}


def register_heterogeneity(name: str):
    def deco(cls):
        _MODELS[name] = cls
        cls.name = name
        return cls

    return deco


def available() -> list[str]:
    return sorted(_MODELS)


def build_heterogeneity(name: str, num_clients: int, seed: int, **options: Any) -> "Heterogeneity":
    if name not in _MODELS:
        raise ValueError(f"heterogeneity.name='{name}' is not known; valid choices: {', '.join(available())}")
    return _MODELS[name](num_clients, seed, **options)


class Heterogeneity:
    name = "base"

    def __init__(self, num_clients: int, seed: int) -> None:
        self.num_clients, self.seed = int(num_clients), int(seed)

    def plan(self, round: int, client: int) -> dict[str, Any]:
        return {}


@register_heterogeneity("none")
class NoHeterogeneity(Heterogeneity):
    """Every client does the configured work and never fails."""
