"""FedNova (Wang, Liu, Liang, Joshi & Poor, NeurIPS 2020, arXiv 2007.07481):
normalised averaging; docs/algorithms.md.

Each participant i of round t reports its model y_i, its example count n_i
and the number of local SGD steps τ_i it actually took (the reply's
``steps``: ``heterogeneity=epochs`` varies it, a straggler's or a
deadline-cut client's partial work shortens it; a client that drops out or
crashes never replies). With the clients' SGD momentum ρ (torch's form,
v ← ρv + g, no dampening):

    a_i    = [τ_i − ρ(1 − ρ^τ_i)/(1 − ρ)] / (1 − ρ)      (= τ_i for ρ = 0)
    p_i    = n_i / Σ_{j∈S_t} n_j                          (FedDisco's p_i with disco=true)
    d_i    = (x_t − y_i) / a_i                            (the normalised update)
    τ_eff  = Σ_i p_i a_i
    x̂      = x_t − τ_eff Σ_i p_i d_i
    x_{t+1} = server optimiser step from x_t towards x̂   (:mod:`.server_opt`; default: x̂)

on the learnable tensors, as NIID-Bench's ``fednova`` branch
(Xtra-Computing/NIID-Bench @ 61b901a, ``experiments.py``: ``train_net_fednova``
computes a_i and d_i on the client, the server ``coeff = Σ a_i n_i/Σn`` and
``x −= coeff·Σ d_i n_i/Σn``), which is the paper's x − η τ_eff Σ p_i d_i with
the learning rate inside d_i. The authors' code (JYWa/FedNova @ 47b4e09,
``distoptim/FedNova.py``) accumulates the same a_i step by step
(``local_counter = ρ·local_counter + 1``, ``local_normalizing_vec +=
local_counter``) and scales each client's cumulative update by
``ratio·τ_eff/a_i``; its global momentum ``gmf`` is
``server_momentum`` with ``server_momentum_form=heavy_ball`` and
``server_lr=1`` here.

Where the sources differ, and what fedagg does:

- BatchNorm running statistics: NIID-Bench (and FedDisco's code) apply the
  normalised update to every state_dict entry; JYWa's optimiser touches only
  parameters. fedagg averages them convexly, Σ p_i y_i (τ_eff p_i / a_i sum to
  more than 1 when the a_i differ, which could make ``running_var``
  negative); integer buffers come from the client with the largest p_i.
- FedProx with FedNova: JYWa folds ημ into a_i and then uses Σ p_i τ_i as
  τ_eff; NIID-Bench ignores μ. fedagg refuses ``train.proximal_mu > 0`` (and
  ``train.optimizer=adam``, whose steps have no such a_i) before training.
- FedDisco's ``algorithms/fednova.py`` (MediaBrain-SJTU/FedDisco @ f3ea299)
  uses a_i = ⌊n_i / B⌋ -- one epoch's batch count, whatever the epochs or
  steps actually taken and ignoring the momentum 0.9 its clients train with.
  fedagg follows NIID-Bench / JYWa (the steps taken, momentum-aware); the two
  agree when ρ = 0 and every client trains the same number of epochs with B
  dividing n_i. Its disco composition is followed: FedDisco's p_i replace the
  size weights in both τ_eff and the average.

``rho`` is the clients' momentum: null (default) reads ``train.momentum`` (the
host passes it in the context); a foreign ServerApp passes
``strategy_for("fednova", rho=...)``. Metrics: ``weights`` (p_i),
``steps`` (τ_i), ``normalizer`` (a_i), ``tau_eff``.
"""
from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from annotated_types import Ge, Lt

from .base import (
    AggregatorContext,
    ClientUpdate,
    Metrics,
    Params,
    RoundInfo,
    is_float,
    is_learnable,
    sorted_updates,
    weighted_sum,
    weights_metrics,
)
from .feddisco import DiscoComposable
from .registry import register
from .server_opt import apply_server_step, server_optimizer

STEPS = "steps"  # the reply metric with the client's local step count (fedagg.flower.protocol.STEPS)


def normalizer(tau: int, rho: float) -> float:
    """a_i of a client that took ``tau`` SGD steps with momentum ``rho``:
    [τ − ρ(1 − ρ^τ)/(1 − ρ)]/(1 − ρ), the sum over its steps of (1 − ρ^s)/(1 − ρ)."""
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


def reported_steps(u: ClientUpdate) -> int | None:
    """The step count ``u`` carries, if it is a positive whole number."""
    s = u.metadata.get(STEPS)
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
        return None
    return int(s)


@register("fednova")
class FedNova(DiscoComposable):
    needs_sgd_clients = True  # a_i is SGD's (with momentum): no Adam, no FedProx term

    def __init__(
        self,
        ctx: AggregatorContext,
        rho: Annotated[float, Ge(0.0), Lt(1.0)] | None = None,
        server_opt: str = "sgd",
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_momentum_form: str = "heavy_ball",
        server_beta_1: float = 0.9,
        server_beta_2: float = 0.99,
        server_tau: float = 1e-3,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        rho = ctx.client_momentum if rho is None else rho
        if rho is None:
            raise ValueError("aggregator.rho is not set and the clients' SGD momentum is unknown; pass rho= "
                             "(the clients' train momentum, 0 for plain SGD)")
        if not (isinstance(rho, (int, float)) and 0.0 <= rho < 1.0):
            raise ValueError(f"aggregator.rho={rho!r} must be in [0, 1) (the clients' SGD momentum)")
        self.rho = float(rho)
        self.opt = server_optimizer(
            server_opt, server_lr, server_momentum, server_momentum_form,
            server_beta_1, server_beta_2, server_tau,
        )

    def update_problem(self, u: ClientUpdate) -> str | None:
        if reported_steps(u) is None:
            got = u.metadata.get(STEPS)
            return (f"fednova needs each reply's '{STEPS}' (the local SGD steps the client took, a positive "
                    f"integer, in the reply's metrics); {'none was sent' if got is None else f'got {got!r}'}")
        return None

    def aggregate(self, global_params: Params, updates: list[ClientUpdate], info: RoundInfo) -> tuple[Params, Metrics]:
        if not updates:
            return global_params, {"weights": []}
        updates = sorted_updates(updates)
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        p, extra = self.disco_adjust(updates, n / n.sum())
        tau = [reported_steps(u) or 0 for u in updates]  # apply() has checked every update has its steps
        a = np.array([normalizer(t, self.rho) for t in tau], dtype=np.float64)
        tau_eff = float(np.dot(p, a))
        coef = tau_eff * p / a  # x̂ = x + Σ coef_i (y_i − x)
        top = int(np.argmax(p))
        target: Params = {}
        for name, ref in global_params.items():
            arrays = [u.params[name] for u in updates]
            if is_learnable(name, ref):
                step = weighted_sum(arrays, coef, center=ref)
                target[name] = (ref.astype(np.float64) + step).astype(ref.dtype)
            elif is_float(ref):  # BatchNorm statistics: the convex p-average
                target[name] = weighted_sum(arrays, p, out_dtype=ref.dtype)
            else:
                target[name] = updates[top].params[name].copy()
        out = apply_server_step(self.opt, global_params, target, info.round)
        metrics: Metrics = {**weights_metrics(updates, p), STEPS: tau, "normalizer": [float(x) for x in a],
                            "tau_eff": tau_eff, **extra}
        return out, metrics

    def state_dict(self) -> dict[str, object]:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: Any) -> None:
        self.opt.load_state_dict(state.get("opt", {}))
