"""Aggregator registry: ``@register("fedavg")`` on a class makes
``aggregator=fedavg`` select it from Hydra."""
from __future__ import annotations

from typing import Any

from .base import Aggregator, AggregatorContext

_REGISTRY: dict[str, type[Aggregator]] = {}


def register(name: str):
    def deco(cls: type[Aggregator]) -> type[Aggregator]:
        if name in _REGISTRY:
            raise ValueError(f"aggregator '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Aggregator]:
    if name not in _REGISTRY:
        raise ValueError(
            f"aggregator.name='{name}' is not a known aggregator; "
            f"valid choices: {', '.join(available())}"
        )
    return _REGISTRY[name]


def build(name: str, ctx: AggregatorContext, **options: Any) -> Aggregator:
    return get(name)(ctx, **options)
