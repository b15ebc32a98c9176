"""Aggregators: one module per paper, each registered by name."""
from .base import (  # noqa: F401
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    Params,
    RoundInfo,
)
from .registry import available, build, get, register  # noqa: F401
from . import fedavg  # noqa: F401  (registers itself)
