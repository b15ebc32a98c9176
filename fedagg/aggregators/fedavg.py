"""FedAvg (McMahan et al., 2017) with an optional server learning rate and
FedAvgM-style server momentum (Hsu et al., 2019).

x_{t+1} = x_t + η Σ_k n_k Δ_k,  n_k = N_k / Σ_{j∈S_t} N_j   (η = 1: plain FedAvg)
With momentum β: v ← β v + Σ_k n_k (x_t − θ_k);  x_{t+1} = x_t − η v.
Streaming: a weighted sum.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    Params,
    RoundInfo,
    is_float,
    sorted_updates,
    weighted_average,
    weights_metrics,
)
from .registry import register


class ServerOptimizer:
    """Server step on the pseudo-gradient x_t − x̄ (learning rate, momentum).

    Shared by every rule that produces a weighted average x̄ ("+FedDisco"
    composes with it). With lr=1 and momentum=0 it returns x̄ exactly.
    """

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"aggregator.server_lr={lr} must be > 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"aggregator.server_momentum={momentum} must be in [0, 1)")
        self.lr, self.momentum = float(lr), float(momentum)
        self.velocity: Params | None = None

    def step(self, x: Params, avg: Params) -> Params:
        if self.lr == 1.0 and self.momentum == 0.0:
            return avg
        out: Params = {}
        if self.momentum and self.velocity is None:
            self.velocity = {k: np.zeros_like(v) for k, v in x.items() if is_float(v)}
        for k, xv in x.items():
            if not is_float(xv):
                out[k] = avg[k]
                continue
            g = xv - avg[k]
            if self.momentum:
                self.velocity[k] = self.momentum * self.velocity[k] + g
                g = self.velocity[k]
            out[k] = (xv - self.lr * g).astype(xv.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": None if self.velocity is None else dict(self.velocity)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v = state.get("velocity")
        self.velocity = None if v is None else {k: np.array(a) for k, a in v.items()}


@register("fedavg")
class FedAvg(Aggregator):
    streaming = True

    def __init__(
        self, ctx: AggregatorContext, server_lr: float = 1.0, server_momentum: float = 0.0, **kw
    ) -> None:
        super().__init__(ctx, **kw)
        self.opt = ServerOptimizer(server_lr, server_momentum)

    def weights(self, updates: list[ClientUpdate], info: RoundInfo) -> np.ndarray:
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        return n / n.sum()

    def aggregate(self, global_params, updates, info):
        if not updates:
            return global_params, {"weights": []}
        updates = sorted_updates(updates)
        w = self.weights(updates, info)
        avg = weighted_average(updates, w, global_params)
        return self.opt.step(global_params, avg), weights_metrics(updates, w)

    def state_dict(self):
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state.get("opt", {}))
