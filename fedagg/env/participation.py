"""Participation patterns: which of the N clients are available in a round.

A pattern is built from ``(num_clients, seed, label_dists, **options)`` and
answers ``available(round) -> bool[N]`` for rounds 1, 2, 3, ... in order.
Its state (e.g. Markov chains) is in ``state_dict()`` so a resume continues
exactly. ``probs`` is the true per-client probability (simulation truth).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

_PATTERNS: dict[str, Callable[..., "Participation"]] = {}


def register_participation(name: str):
    def deco(cls):
        _PATTERNS[name] = cls
        cls.name = name
        return cls

    return deco


def available() -> list[str]:
    return sorted(_PATTERNS)


def build_participation(
    name: str, num_clients: int, seed: int, label_dists: np.ndarray | None = None, **options: Any
) -> "Participation":
    if name not in _PATTERNS:
        raise ValueError(f"participation.name='{name}' is not known; valid choices: {', '.join(available())}")
    return _PATTERNS[name](num_clients, seed, label_dists, **options)


class Participation:
    name = "base"

    def __init__(self, num_clients: int, seed: int, label_dists: np.ndarray | None = None) -> None:
        self.num_clients, self.seed = int(num_clients), int(seed)
        self.probs = np.ones(self.num_clients)

    def available(self, round: int) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


@register_participation("full")
class Full(Participation):
    """Every client takes part in every round."""

    def available(self, round: int) -> np.ndarray:
        return np.ones(self.num_clients, dtype=bool)
