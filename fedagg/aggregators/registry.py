"""Aggregator registry: ``@register("fedavg")`` on a class makes
``aggregator=fedavg`` select it from Hydra."""
from __future__ import annotations

from ..registry import Registry
from .base import Aggregator, AggregatorContext

_REGISTRY: Registry[type[Aggregator]] = Registry("aggregator.name")
register = _REGISTRY.register
available = _REGISTRY.available
get = _REGISTRY.get


def build(name: str, ctx: AggregatorContext, **options: object) -> Aggregator:
    """The rule ``name`` with ``options``; its context holds only what the rule declares it needs."""
    cls = get(name)
    return cls(ctx.restricted_to(cls), **options)
