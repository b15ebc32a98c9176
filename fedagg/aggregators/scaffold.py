"""SCAFFOLD (Karimireddy et al., ICML 2020), SCAFFOLD-M and FedAvg-M (Cheng et al., *Momentum
Benefits Non-IID Federated Learning Simply and Provably*, ICLR 2024, arXiv 2306.16504).

The rules need a cooperating client: fedagg's ClientApp applies the client-side term in local
training (:mod:`fedagg.task.correction`, told by the instruction's ``terms``) and replies
``dc.<name>`` (SCAFFOLD's Δc_i) and ``lr_steps`` (K_i·η) in the ``fedagg.rule-reply`` record; a
reply without them is refused (:meth:`Scaffold.update_problem`). Each client keeps its control
variate c_i between rounds (:mod:`fedagg.flower.client_state`); the server's arrays (c, and the
momentum g for β < 1) travel with the model.

SCAFFOLD, per round on the asked set S (x: global model, y_i: client i's model, w_i: 1/|S|,
or n_i/Σn with ``weighted=true``)::

    client: y <- y - η (∇f_i(y) - c_i + c)          K_i steps (the post-step form of NIID-Bench)
            c_i+ = c_i - c + (x - y_i)/(K_i η)     option II;   Δc_i = c_i+ - c_i
    server: x <- x + η_g Σ w_i (y_i - x)
            c <- c + (|S|/N) mean_i Δc_i           (c_update=paper; c_update=mean: c + mean_i Δc_i)

SCAFFOLD-M (``momentum`` β < 1) and FedAvg-M (``aggregator=fedavg_m``, no control variates)::

    client: y <- y - η (β (∇f_i(y) - c_i + c) + (1 - β) g)      (FedAvg-M: c = c_i = 0)
            c_i+ = the mean of the round's local gradients (SCAFFOLD-M only; see correction.py)
    server: g <- Σ w_i (x - y_i)/(K_i η),   x <- x - γ g,   γ = η_g Σ w_i K_i η
            c <- c + (1/N) Σ_i Δc_i                             (SCAFFOLD-M)

γ: the paper's global step; fedagg writes it as η_g times the mean local path length K·η, so
η_g = 1 with equal K_i moves x to the plain mean of the y_i, as FedAvg does.

Where the paper and the reference code differ (NIID-Bench, Xtra-Computing/NIID-Bench,
``experiments.py`` @ 90cc8de: ``train_net_scaffold``, ``local_train_net_scaffold`` and the
``alg == 'scaffold'`` server loop), and what fedagg does:

* server model: the paper averages Δy_i uniformly with a global step η_g; NIID-Bench sets x to
  the n_i-weighted mean of the y_i (η_g = 1). fedagg: the paper (``weighted=false``, ``server_lr``);
  ``weighted=true`` gives NIID-Bench's.
* server control variate: the paper adds (|S|/N)·mean Δc_i; NIID-Bench adds mean Δc_i (no |S|/N).
  fedagg: ``c_update=paper`` (default) or ``mean``.
* K: NIID-Bench divides by the number of steps actually taken (``cnt``), as fedagg does (a
  straggler's partial work counts its own K_i).
* the correction: NIID-Bench applies ``p -= lr (c - c_i)`` after the optimiser's step, so SGD
  momentum and weight decay act on the plain gradient only; fedagg does the same for β = 1.
* initial control variates: the paper starts from zeros; NIID-Bench copies a randomly
  initialised model into c and every c_i (the difference cancels in every c - c_i and Δc_i).
  fedagg: zeros.
* the learning rate in the option-II update: NIID-Bench uses the configured lr; fedagg the
  round's (``train.lr_decay``), the one the client stepped with.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Gt, Interval

from ..task.correction import LR_STEPS, REPLY_DC, SERVER_C, SERVER_G
from .base import (
    AggregatorContext,
    ClientUpdate,
    Params,
    is_learnable,
    sorted_updates,
    weighted_average,
    weighted_sum,
    weights_metrics,
)
from .feddisco import DiscoComposable
from .registry import register


@register("scaffold")
class Scaffold(DiscoComposable):
    """SCAFFOLD (``momentum`` = 1) or SCAFFOLD-M (``momentum`` = β < 1); see the module docstring."""

    client_state = True
    needs_fedagg_client = True
    uses_c = True

    def __init__(
        self,
        ctx: AggregatorContext,
        server_lr: Annotated[float, Gt(0)] = 1.0,
        momentum: Annotated[float, Interval(gt=0.0, le=1.0)] = 1.0,
        weighted: bool = False,
        c_update: Literal["paper", "mean"] = "paper",
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        if not float(server_lr) > 0:
            raise ValueError(f"aggregator.server_lr={server_lr} must be > 0")
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"aggregator.momentum={momentum} must be in (0, 1] (1 = no momentum)")
        if c_update not in ("paper", "mean"):
            raise ValueError(f"aggregator.c_update={c_update!r} must be paper or mean")
        self.server_lr, self.beta, self.weighted, self.c_update = float(server_lr), float(momentum), bool(weighted), c_update
        self.c: Params = {}
        self.g: Params = {}

    @staticmethod
    def _names(params: Params) -> list[str]:
        return [n for n, a in params.items() if is_learnable(n, a)]

    def _init(self, params: Params) -> None:
        names = self._names(params)
        if self.uses_c and not self.c:
            self.c = {n: np.zeros_like(params[n]) for n in names}
        if self._direction_form and not self.g:
            self.g = {n: np.zeros_like(params[n]) for n in names}

    @property
    def _direction_form(self) -> bool:
        """The momentum paper's server step (x - γ g) rather than SCAFFOLD's (x + η_g mean Δy)."""
        return self.beta < 1.0 or not self.uses_c

    # -- what travels -------------------------------------------------------------------
    def client_terms(self) -> dict[str, str | float]:
        return {"rule": "scaffold" if self.uses_c else "fedavg_m", "beta": self.beta}

    def server_arrays(self, global_params: Params) -> Params:
        self._init(global_params)
        out: Params = {SERVER_C + n: v for n, v in self.c.items()} if self.uses_c else {}
        if self.beta < 1.0:
            out.update({SERVER_G + n: v for n, v in self.g.items()})
        return out

    def update_problem(self, update: ClientUpdate) -> str | None:
        ex = update.extras or {}
        need = [LR_STEPS] + ([REPLY_DC + n for n in self._names(update.params)] if self.uses_c else [])
        missing = [k for k in need if k not in ex]
        if not missing:
            ls = np.asarray(ex[LR_STEPS]).reshape(-1)
            if ls.size != 1 or not np.isfinite(ls[0]) or ls[0] <= 0:
                return f"aggregator '{self.name}' needs '{LR_STEPS}' = K*lr > 0 in the reply's 'fedagg.rule-reply'"
            bad = [k for k in need[1:] if np.shape(ex[k]) != np.shape(update.params[k[len(REPLY_DC):]])
                   or not np.all(np.isfinite(ex[k]))]
            return f"'fedagg.rule-reply' array '{bad[0]}' has the wrong shape or non-finite values" if bad else None
        what = "the control-variate delta (dc.<name>) and " if self.uses_c else ""
        return (f"aggregator '{self.name}' needs {what}K*lr ({LR_STEPS}) in the reply's 'fedagg.rule-reply' "
                f"ArrayRecord, which fedagg's ClientApp sends; this reply lacks {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))

    # -- the rule -------------------------------------------------------------------------
    def aggregate(self, global_params, updates, info):
        self._init(global_params)
        if not updates:
            return global_params, {"weights": []}
        updates = sorted_updates(updates)
        w, extra = self.composed_weights(updates, info)
        out = weighted_average(updates, w, global_params)  # buffers and integer tensors, as FedAvg
        ls = np.array([float(np.asarray(u.extras[LR_STEPS]).reshape(-1)[0]) for u in updates])  # type: ignore[index]
        for name in self._names(global_params):
            x = global_params[name]
            if not self._direction_form:  # x + η_g Σ w_i (y_i - x)
                step = weighted_sum([u.params[name] for u in updates], w, center=x)
                out[name] = (x + self.server_lr * step).astype(x.dtype)
            else:  # g = Σ w_i (x - y_i)/(K_i η);  x - γ g,  γ = η_g Σ w_i K_i η
                g = -weighted_sum([u.params[name] for u in updates], w / ls, center=x)
                gamma = self.server_lr * float(np.dot(w, ls))
                out[name] = (x - gamma * g).astype(x.dtype)
                self.g[name] = g.astype(x.dtype)
            if self.uses_c:
                scale = 1.0 / self.ctx.num_clients if self.c_update == "paper" else 1.0 / len(updates)
                dc = weighted_sum([u.extras[REPLY_DC + name] for u in updates],  # type: ignore[index]
                                  np.full(len(updates), scale))
                self.c[name] = (self.c[name] + dc).astype(x.dtype)
        metrics = weights_metrics(updates, w)
        metrics.update(extra)
        if self.uses_c:
            metrics["c_norm"] = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in self.c.values())))
        return out, metrics

    def state_dict(self):
        return {"c": {k: v.copy() for k, v in self.c.items()}, "g": {k: v.copy() for k, v in self.g.items()}}

    def load_state_dict(self, state):
        self.c = {k: np.asarray(v).copy() for k, v in dict(state.get("c") or {}).items()}
        self.g = {k: np.asarray(v).copy() for k, v in dict(state.get("g") or {}).items()}


@register("fedavg_m")
class FedAvgMomentum(Scaffold):
    """FedAvg-M of Cheng et al. (ICLR 2024): the clients mix the server's momentum g into every
    local step, ``β grad + (1 - β) g``; no control variates, no client state. (Not FedAvgM of Hsu
    et al., the server-side momentum: ``aggregator=fedavg aggregator.server_momentum=...``.)"""

    client_state = False
    uses_c = False

    def __init__(
        self,
        ctx: AggregatorContext,
        server_lr: Annotated[float, Gt(0)] = 1.0,
        momentum: Annotated[float, Interval(gt=0.0, le=1.0)] = 0.9,
        weighted: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, server_lr=server_lr, momentum=momentum, weighted=weighted, **kw)
