"""fedagg on Flower: the rules as Message-API strategies (``strategy_for``),
the ClientApp, the typed client instruction and the message codec.

The names below load on first use: a ClientApp process (a Ray worker, a
SuperNode) imports ``fedagg.flower.client_app`` without the strategy side
(aggregators, networkx, omegaconf), which is most of a worker's start-up."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callbacks import RoundCallback
    from .rules import strategy_for
    from .strategy import FedaggStrategy, RoundRecord

__all__ = ["FedaggStrategy", "RoundCallback", "RoundRecord", "strategy_for"]
_HOME = {"RoundCallback": "callbacks", "strategy_for": "rules", "FedaggStrategy": "strategy", "RoundRecord": "strategy"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
