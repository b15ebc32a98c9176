"""Server optimisers: how the server moves the global model x_t towards the
round's aggregate, given the update direction Δ_t = x̄_t − x_t (x̄_t: the
rule's weighted average, or x_t + the rule's direction for the update-based
rules). Shared by every delta-based rule (``fedavg``, ``feddisco``, ``fedau``
and its baselines); see docs/algorithms.md for the derivations.

``server_opt='sgd'`` (default), with server learning rate η and momentum β:

* ``server_momentum_form='heavy_ball'`` (FedAvgM, Hsu et al. 2019; PyTorch's
  SGD; Flower's ``FedAvgM``):  v ← β v − Δ,         x ← x − η v
* ``server_momentum_form='ema'`` (the official FedDisco code):
                                v ← β v − (1−β) Δ,   x ← x − η v
  The two give the same models when η_ema·(1−β) = η_heavy_ball; the official
  FedDisco step is ``ema`` with η = 1, i.e. ``heavy_ball`` with η = 1−β.
  With β = 0 both are x ← x + η Δ (η = 1: x̄ exactly).

``server_opt='adam' | 'yogi' | 'adagrad'`` (FedOpt, Reddi et al., ICLR 2021,
arXiv 2003.00295), the math of Flower's ``FedAdam`` / ``FedYogi`` /
``FedAdagrad`` strategies, with t the 1-based round:

    m ← β₁ m + (1−β₁) Δ                       (adagrad: β₁ = 0, m = Δ)
    adam:    v ← β₂ v + (1−β₂) Δ²
             x ← x + η √(1−β₂^(t+1)) / (1−β₁^(t+1)) · m / (√v + τ)
    yogi:    v ← v − (1−β₂) Δ² sign(v − Δ²);   x ← x + η m / (√v + τ)
    adagrad: v ← v + Δ²;                       x ← x + η m / (√v + τ)

m and v start at 0. ``server_lr=None`` takes the optimiser's default: 1 for
sgd, and Flower's defaults for the others (adam 0.1, yogi 0.01, adagrad 0.1);
β₁ = 0.9, β₂ = 0.99, τ = 1e-3 are Flower's defaults too.

The optimiser moves the tensors it is given (the rules pass the learnable
float tensors); everything is computed in float64 and cast back.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Params, is_learnable

KINDS = ("sgd", "adam", "yogi", "adagrad")
MOMENTUM_FORMS = ("heavy_ball", "ema")
DEFAULT_LR = {"sgd": 1.0, "adam": 0.1, "yogi": 0.01, "adagrad": 0.1}

Arrays = dict[str, np.ndarray]


class ServerOptimizer:
    """One server step per round on named tensors. State: the momentum /
    moment buffers (float64), created at the first step."""

    def __init__(
        self,
        kind: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.0,
        momentum_form: str = "heavy_ball",
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"aggregator.server_opt='{kind}' is not one of {', '.join(KINDS)}")
        if momentum_form not in MOMENTUM_FORMS:
            raise ValueError(
                f"aggregator.server_momentum_form='{momentum_form}' is not one of "
                f"{', '.join(MOMENTUM_FORMS)}"
            )
        lr = DEFAULT_LR[kind] if lr is None else float(lr)
        if not lr > 0:
            raise ValueError(f"aggregator.server_lr={lr} must be > 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"aggregator.server_momentum={momentum} must be in [0, 1)")
        if kind != "sgd" and momentum != 0.0:
            raise ValueError(
                f"aggregator.server_momentum={momentum} applies to server_opt=sgd only; "
                f"{kind} uses aggregator.server_beta_1 (set server_momentum=0)"
            )
        for key, val in (("server_beta_1", beta_1), ("server_beta_2", beta_2)):
            if not 0.0 <= val < 1.0:
                raise ValueError(f"aggregator.{key}={val} must be in [0, 1)")
        if not tau > 0:
            raise ValueError(f"aggregator.server_tau={tau} must be > 0")
        self.kind, self.lr, self.momentum, self.form = kind, lr, float(momentum), momentum_form
        self.beta_1 = 0.0 if kind == "adagrad" else float(beta_1)
        self.beta_2 = float(beta_2)
        self.tau = float(tau)
        self.m: Arrays | None = None  # sgd: the velocity v; FedOpt: the first moment m
        self.v: Arrays | None = None  # FedOpt: the second moment v

    @property
    def identity(self) -> bool:
        """True when a step returns x + Δ exactly (plain FedAvg)."""
        return self.kind == "sgd" and self.lr == 1.0 and self.momentum == 0.0

    def step(self, x: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], rnd: int) -> Arrays:
        """New values of the tensors in ``delta`` (Δ = x̄ − x, float64), cast to
        the dtype of ``x``. ``rnd`` is the 1-based round (Adam's bias correction)."""
        if self.m is None:
            self.m = {k: np.zeros(np.shape(d), np.float64) for k, d in delta.items()}
        if self.kind != "sgd" and self.v is None:
            self.v = {k: np.zeros(np.shape(d), np.float64) for k, d in delta.items()}
        out: Arrays = {}
        for k, d in delta.items():
            d = np.asarray(d, dtype=np.float64)
            x64 = np.asarray(x[k], dtype=np.float64)
            if self.kind == "sgd":
                if self.momentum:
                    damp = 1.0 - self.momentum if self.form == "ema" else 1.0
                    self.m[k] = self.momentum * self.m[k] - damp * d
                    new = x64 - self.lr * self.m[k]
                else:
                    new = x64 + self.lr * d
            else:
                assert self.v is not None
                self.m[k] = self.beta_1 * self.m[k] + (1.0 - self.beta_1) * d
                d2 = d * d
                if self.kind == "adam":
                    self.v[k] = self.beta_2 * self.v[k] + (1.0 - self.beta_2) * d2
                    eta = (
                        self.lr * np.sqrt(1.0 - self.beta_2 ** (rnd + 1.0))
                        / (1.0 - self.beta_1 ** (rnd + 1.0))
                    )
                elif self.kind == "yogi":
                    self.v[k] = self.v[k] - (1.0 - self.beta_2) * d2 * np.sign(self.v[k] - d2)
                    eta = self.lr
                else:  # adagrad
                    self.v[k] = self.v[k] + d2
                    eta = self.lr
                new = x64 + eta * self.m[k] / (np.sqrt(self.v[k]) + self.tau)
            out[k] = new.astype(np.asarray(x[k]).dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        def copy(a: Arrays | None) -> Arrays | None:
            return None if a is None else {k: v.copy() for k, v in a.items()}

        return {"m": copy(self.m), "v": copy(self.v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def read(a: Any) -> Arrays | None:
            return None if a is None else {k: np.array(v, dtype=np.float64) for k, v in a.items()}

        if "velocity" in state:  # checkpoints written before FedOpt (sgd velocity only)
            self.m, self.v = read(state["velocity"]), None
            return
        self.m, self.v = read(state.get("m")), read(state.get("v"))


def server_optimizer(
    server_opt: str = "sgd",
    server_lr: float | None = None,
    server_momentum: float = 0.0,
    server_momentum_form: str = "heavy_ball",
    server_beta_1: float = 0.9,
    server_beta_2: float = 0.99,
    server_tau: float = 1e-3,
) -> ServerOptimizer:
    """Build from the aggregator's config keys (names as in conf/aggregator)."""
    return ServerOptimizer(
        server_opt, server_lr, server_momentum, server_momentum_form,
        server_beta_1, server_beta_2, server_tau,
    )


def apply_server_step(opt: ServerOptimizer, x: Params, avg: Params, rnd: int) -> Params:
    """x_{t+1} for the rules that form a weighted average x̄ (``avg``): the
    optimiser's step towards x̄ on the learnable tensors, x̄'s values elsewhere
    (BN running statistics: a convex combination keeps ``running_var`` ≥ 0;
    integer buffers: as the rule chose them)."""
    if opt.identity:
        return avg
    delta = {
        k: avg[k].astype(np.float64) - x[k].astype(np.float64) for k in x if is_learnable(k, x[k])
    }
    out = dict(avg)
    out.update(opt.step(x, delta, rnd))
    return out
