"""FedAvg (McMahan et al., AISTATS 2017) with a server optimiser: a server
learning rate, FedAvgM momentum (Hsu et al., 2019) or FedAdam / FedYogi /
FedAdagrad (Reddi et al., ICLR 2021); see :mod:`.server_opt` and
docs/algorithms.md.

    x̄ = Σ_k n_k θ_k,  n_k = N_k / Σ_{j∈S_t} N_j
    x_{t+1} = ServerOptimizer.step(x_t, Δ = x̄ − x_t)   (default sgd, η = 1: x̄)

The optimiser moves the learnable tensors; BatchNorm running statistics are
set to x̄'s (a convex combination, so ``running_var`` stays ≥ 0 whatever the
server step) and integer tensors (``num_batches_tracked``) are taken from the
client with the largest weight. Streaming: a weighted sum.

``disco=true`` replaces n_k with FedDisco's discrepancy-aware weights
(:class:`~.feddisco.DiscoComposable`; ``disco_a``, ``disco_b``,
``disco_metric``, ``disco_target``): "FedAvg+FedDisco", and with a client
``train.proximal_mu`` > 0 "FedProx+FedDisco", as the official FedDisco code
composes them. It equals ``aggregator=feddisco`` with the same server
optimiser, bit for bit.

FedProx (Li et al., MLSys 2020) is this rule with the clients' proximal term:
``proximal_mu`` > 0 is sent to the clients (:meth:`client_config`; the preset
``aggregator=fedprox`` sets FedDisco's official μ = 0.01); 0 leaves the
clients' own ``train.proximal_mu``.
"""
from __future__ import annotations

from typing import Any

from .base import (
    AggregatorContext,
    sorted_updates,
    weighted_average,
    weights_metrics,
)
from .feddisco import DiscoComposable
from .registry import register
from .server_opt import apply_server_step, server_optimizer


@register("fedavg")
class FedAvg(DiscoComposable):

    def __init__(
        self,
        ctx: AggregatorContext,
        server_opt: str = "sgd",
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_momentum_form: str = "heavy_ball",
        server_beta_1: float = 0.9,
        server_beta_2: float = 0.99,
        server_tau: float = 1e-3,
        proximal_mu: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        if proximal_mu < 0:
            raise ValueError(f"aggregator.proximal_mu={proximal_mu} must be >= 0")
        self.proximal_mu = float(proximal_mu)
        self.opt = server_optimizer(
            server_opt, server_lr, server_momentum, server_momentum_form,
            server_beta_1, server_beta_2, server_tau,
        )

    def client_config(self) -> dict[str, Any]:
        # only a FedProx term the aggregator itself sets: 0 must not override the client's train.proximal_mu
        return {"proximal_mu": self.proximal_mu} if self.proximal_mu > 0 else {}

    def aggregate(self, global_params, updates, info):
        if not updates:
            return global_params, {"weights": []}
        updates = sorted_updates(updates)
        w, extra = self.composed_weights(updates, info)
        avg = weighted_average(updates, w, global_params)
        return apply_server_step(self.opt, global_params, avg, info.round), {**weights_metrics(updates, w), **extra}

    def state_dict(self):
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state.get("opt", {}))
