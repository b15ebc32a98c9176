"""Aggregator registry: ``@register("fedavg")`` on a class makes
``aggregator=fedavg`` select it from Hydra."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import Aggregator, AggregatorContext

_REGISTRY: Registry[type[Aggregator]] = Registry("aggregator.name")
register = _REGISTRY.register
available = _REGISTRY.available
get = _REGISTRY.get


def build(name: str, ctx: AggregatorContext, **options: Any) -> Aggregator:
    return get(name)(ctx, **options)
