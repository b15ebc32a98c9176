"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough, Saligrama, "Federated Learning Based on Dynamic
Regularization", ICLR 2021), ``aggregator=feddyn``.

Client k minimises ``L_k(θ) - <∇L_k(θ_k^{t-1}), θ> + (α/2)||θ - x_t||²`` from the global model
x_t; fedagg's ClientApp applies it (:mod:`fedagg.task.correction`): every gradient gets the
constant ``α (h_k - x_t)`` and the optimiser's weight decay ``+ α``, where the client's state
``h_k = -∇L_k(θ_k^{t-1})/α`` (zeros before its first round) becomes ``h_k + (θ_k - x_t)``.
The server, over the accepted updates S_t (w_k = 1/|S_t|, or n_k with ``weighted=true``)::

    H <- H + (1/N) Σ_{k∈S_t} (θ_k - x_t)       (= mean over all N clients of h_k)
    x_{t+1} = Σ_k w_k θ_k + H

-- the paper's ``h^t = h^{t-1} - α (1/m) Σ (θ_k - x)``, ``x = mean θ_k - h^t/α`` with H = -h/α.

Where the paper and the code differ (FedDisco, MediaBrain-SJTU/FedDisco ``algorithms/feddyn.py``
@ 48288a1; it follows the FedDyn authors' code), and what fedagg does:

* the linear term's α: the code scales it per client, ``α / w_k`` with w_k = N·n_k/Σn, while the
  quadratic term (the optimiser's weight decay) keeps α; fedagg uses α for both (the paper).
* the code hard-codes SGD momentum 0.9 and clips each gradient to norm 10; fedagg uses
  ``train.momentum`` and does not clip.
* the model the code evaluates is the plain mean of the θ_k (``avg_model``), while clients start
  from ``avg + mean h`` (``cld_model``); fedagg has one global model, the paper's x_{t+1}, which the
  clients receive and the server evaluates.
* H counts the updates the server accepted; a client whose reply is rejected has updated its own
  h_k all the same (as on a real device).

``alpha`` must be > 0 (α ≤ 0 is refused when the config is loaded); FedDisco's code uses 0.01.
"""
from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from annotated_types import Gt

from ..task.correction import missing_term_problem
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


@register("feddyn")
class FedDyn(DiscoComposable):
    client_state = True
    needs_fedagg_client = True

    def __init__(self, ctx: AggregatorContext, alpha: Annotated[float, Gt(0)] = 0.01, weighted: bool = False,
                 **kw: Any) -> None:
        super().__init__(ctx, **kw)
        if not float(alpha) > 0:
            raise ValueError(f"aggregator.alpha={alpha} must be > 0 (FedDyn's regulariser weight)")
        self.alpha, self.weighted = float(alpha), bool(weighted)
        self.h: Params = {}  # H = mean over all clients of h_k

    def client_terms(self) -> dict[str, str | float]:
        return {"rule": "feddyn", "alpha": self.alpha}

    def update_problem(self, update: ClientUpdate) -> str | None:
        return missing_term_problem("feddyn", "the dynamic regulariser", update.extras)

    def aggregate(self, global_params, updates, info):
        names = [n for n, a in global_params.items() if is_learnable(n, a)]
        if not self.h:
            self.h = {n: np.zeros_like(global_params[n]) for n in names}
        if not updates:
            return global_params, {"weights": []}
        updates = sorted_updates(updates)
        w, extra = self.composed_weights(updates, info)
        out = weighted_average(updates, w, global_params)
        ones = np.full(len(updates), 1.0 / self.ctx.num_clients)
        for name in names:
            x = global_params[name]
            self.h[name] = (self.h[name] + weighted_sum([u.params[name] for u in updates], ones, center=x)
                            ).astype(x.dtype)
            out[name] = (out[name] + self.h[name]).astype(x.dtype)
        metrics = weights_metrics(updates, w)
        metrics.update(extra)
        metrics["h_norm"] = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in self.h.values())))
        return out, metrics

    def state_dict(self):
        return {"h": {k: v.copy() for k, v in self.h.items()}}

    def load_state_dict(self, state):
        self.h = {k: np.asarray(v).copy() for k, v in dict(state.get("h") or {}).items()}
