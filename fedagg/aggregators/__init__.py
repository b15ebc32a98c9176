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
from . import fedau  # noqa: F401
from . import feddisco  # noqa: F401
from . import ida  # noqa: F401
from . import fedlaw  # noqa: F401
from . import gossip  # noqa: F401
