"""The ``dp`` section: Flower's central differential-privacy wrappers around a
fedagg run's strategy.

``dp.mode=server_fixed`` wraps the run's strategy in Flower's
``DifferentialPrivacyServerSideFixedClipping`` (every update clipped to
``dp.clipping_norm`` around the global model, Gaussian noise of stdev
``noise_multiplier * clipping_norm / num_sampled_clients`` added to the
aggregate); ``server_adaptive`` in ``DifferentialPrivacyServerSideAdaptiveClipping``
(the norm starts at ``dp.clipping_norm`` and follows ``target_clipped_quantile``
at ``clip_norm_lr``; a resumed run restores the norm its last round ended with). ``num_sampled_clients`` is the number of clients a
round is expected to ask (null: ``num_clients``). The noise multiplier and the
round's clipping norm are reported in metrics.csv (``dp_noise_multiplier``,
``dp_clipping_norm``). Flower draws the noise from numpy's global generator;
:class:`NoiseSeed` seeds it for every round from the named stream
``("dp-noise", round)``, so a run repeats exactly. Flower's wrappers skip the
aggregation of a round in which any client failed (fedagg counts the round's
clients as rejected).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from .flower.callbacks import RoundCallback
from .seeding import rng

if TYPE_CHECKING:
    from .config import Config
    from .flower.strategy import FedaggStrategy, RoundRecord

MODES = ("none", "server_fixed", "server_adaptive")


def wrap(strategy: FedaggStrategy, cfg: Config) -> Strategy | None:
    """Flower's DP wrapper around ``strategy`` for ``cfg.dp`` (None: ``dp.mode=none``)."""
    dp = cfg.dp
    m = dp.num_sampled_clients if dp.num_sampled_clients is not None else cfg.num_clients
    if dp.mode == "server_fixed":
        return DifferentialPrivacyServerSideFixedClipping(strategy, dp.noise_multiplier, dp.clipping_norm, m)
    if dp.mode == "server_adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, dp.noise_multiplier, m, initial_clipping_norm=dp.clipping_norm,
            target_clipped_quantile=dp.target_clipped_quantile, clip_norm_lr=dp.clip_norm_lr)
    return None


def restore(via: Strategy, rows: list[dict[str, object]]) -> None:
    """A resumed run's adaptive clipping norm: the one its last round ended with
    (that round's ``dp_clipping_norm``, kept exactly in the checkpoint's rows),
    so a resumed ``server_adaptive`` run goes on as if it had not stopped."""
    last = rows[-1].get("dp_clipping_norm") if rows else None
    if isinstance(via, DifferentialPrivacyServerSideAdaptiveClipping) and isinstance(last, (int, float)):
        via.clipping_norm = float(last)


class NoiseSeed(RoundCallback):
    """Seeds numpy's global generator (Flower's DP noise) before every round."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def _seed(self, rnd: int) -> None:
        np.random.seed(int(rng(self.seed, "dp-noise", rnd).integers(2**32)))

    def on_train_begin(self, strategy: FedaggStrategy, *, start_round: int, num_rounds: int) -> None:
        self._seed(start_round)

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        self._seed(record.round + 1)
        return False
