"""Callbacks around a round of :meth:`FedaggStrategy.start`.

The round itself (configure, send, aggregate, evaluate) reads in one file,
``strategy.py``; everything a run does *besides* the round -- writing
metrics, TensorBoard, checkpoints, the console line, the final model --
hangs off these three hooks, called in the order the callbacks were given.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Result

    from .strategy import FedaggStrategy, RoundRecord


class RoundCallback:
    """Base class: override the hooks you need."""

    def on_train_begin(self, strategy: FedaggStrategy, *, start_round: int, num_rounds: int) -> None:
        """Before the first round this run executes (``start_round`` > 1 on a resume)."""

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        """After each round, with everything observed in it. Return True to stop training."""
        return False

    def on_train_end(self, strategy: FedaggStrategy, result: Result) -> None:
        """After the last round (also after an early stop)."""
