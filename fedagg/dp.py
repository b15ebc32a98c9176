"""The ``dp`` section: Flower's central differential-privacy wrappers around a
fedagg run's strategy.

``dp.mode=server_fixed`` wraps the run's strategy in Flower's
``DifferentialPrivacyServerSideFixedClipping`` (every update clipped to
``dp.clipping_norm`` around the global model, Gaussian noise of stdev
``noise_multiplier * clipping_norm / num_sampled_clients`` added to the
aggregate); ``server_adaptive`` in ``DifferentialPrivacyServerSideAdaptiveClipping``
(the norm starts at ``dp.clipping_norm`` and follows ``target_clipped_quantile``
at ``clip_norm_lr``; a resumed run restores the norm its last round ended with).
``client_fixed`` and ``client_adaptive`` are the same with the clipping done by
the clients: the strategy is wrapped in ``DifferentialPrivacyClientSideFixedClipping``
/ ``DifferentialPrivacyClientSideAdaptiveClipping``, which send the round's
norm in the train config, and fedagg's ClientApp runs Flower's
``fixedclipping_mod`` / ``adaptiveclipping_mod`` on its train messages
(:func:`fedagg.flower.client_app.for_dp_mode`; the adaptive mod also reports
whether it clipped, which moves the norm). Flower's mods read per-client train
messages, so these runs train client by client: ``runtime.vectorize=auto`` falls
back (logged once) and ``runtime.vectorize=true`` is refused; a real SuperLink's
ClientApp (the FAB's ``app``) has no mods, so the deployment app refuses them.
``num_sampled_clients`` is the number of clients a
round is expected to ask (null: ``num_clients``); the adaptive modes need
``noise_multiplier`` below ``num_sampled_clients / 10`` (Flower's rule, checked by
:func:`problem` with the config). The noise multiplier and the
round's clipping norm are reported in metrics.csv (``dp_noise_multiplier``,
``dp_clipping_norm``). Flower draws the noise (and the adaptive modes' noisy
clipped count) from numpy's global generator;
:class:`NoiseSeed` seeds it for every round from the named stream
``("dp-noise", round)``, so a run repeats exactly. Flower's wrappers skip the
aggregation of a round in which any client failed (fedagg counts the round's
clients as rejected).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from .flower.callbacks import RoundCallback
from .seeding import rng

if TYPE_CHECKING:
    from .config import Config
    from .flower.strategy import FedaggStrategy, RoundRecord

CLIENT_MODES = ("client_fixed", "client_adaptive")  # clipped by Flower's mods in fedagg's ClientApp
MODES = ("none", "server_fixed", "server_adaptive", *CLIENT_MODES)


def _sampled(cfg: Config) -> int:
    dp = cfg.dp
    return dp.num_sampled_clients if dp.num_sampled_clients is not None else cfg.num_clients


def problem(cfg: Config) -> str | None:
    """Why ``cfg``'s ``dp`` section cannot run with the rest of ``cfg`` (one line), or None."""
    dp = cfg.dp
    if dp.mode in CLIENT_MODES and str(cfg.runtime.vectorize).lower() == "true":
        return (f"runtime.vectorize={str(cfg.runtime.vectorize).lower()} is not allowed with dp.mode={dp.mode}: "
                "Flower's client-side clipping mods clip per-client train messages, not chunks; use "
                "runtime.vectorize=auto or false")
    if dp.mode.endswith("_adaptive"):
        try:  # Flower's own rule: the clipped count's noise (stdev num_sampled_clients/20) must allow the multiplier
            compute_adaptive_noise_params(dp.noise_multiplier, _sampled(cfg), None)
        except ValueError:
            return (f"dp.noise_multiplier={dp.noise_multiplier} is too large for dp.mode={dp.mode} with "
                    f"{_sampled(cfg)} sampled clients: Flower's adaptive clipping needs it below "
                    f"num_sampled_clients/10 = {_sampled(cfg) / 10:g}; lower dp.noise_multiplier")
    return None


def wrap(strategy: FedaggStrategy, cfg: Config) -> Strategy | None:
    """Flower's DP wrapper around ``strategy`` for ``cfg.dp`` (None: ``dp.mode=none``)."""
    dp = cfg.dp
    m = _sampled(cfg)
    fixed = {"server_fixed": DifferentialPrivacyServerSideFixedClipping,
             "client_fixed": DifferentialPrivacyClientSideFixedClipping}.get(dp.mode)
    if fixed is not None:
        return fixed(strategy, dp.noise_multiplier, dp.clipping_norm, m)
    adaptive = {"server_adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
                "client_adaptive": DifferentialPrivacyClientSideAdaptiveClipping}.get(dp.mode)
    if adaptive is not None:
        return adaptive(strategy, dp.noise_multiplier, m, initial_clipping_norm=dp.clipping_norm,
                        target_clipped_quantile=dp.target_clipped_quantile, clip_norm_lr=dp.clip_norm_lr)
    return None


def restore(via: Strategy, rows: list[dict[str, object]]) -> None:
    """A resumed run's adaptive clipping norm: the one its last round ended with
    (that round's ``dp_clipping_norm``, kept exactly in the checkpoint's rows),
    so a resumed ``server_adaptive`` or ``client_adaptive`` run goes on as if it had not stopped."""
    last = rows[-1].get("dp_clipping_norm") if rows else None
    adaptive = (DifferentialPrivacyServerSideAdaptiveClipping, DifferentialPrivacyClientSideAdaptiveClipping)
    if isinstance(via, adaptive) and isinstance(last, (int, float)):
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
