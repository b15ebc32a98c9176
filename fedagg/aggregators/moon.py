"""MOON (Li, He, Song, "Model-Contrastive Federated Learning", CVPR 2021), ``aggregator=moon``.

The server is FedAvg (n_k-weighted average, as the official code's ``fed_avg_freqs``; with
FedAvg's server optimisers and ``disco=true``); the clients minimise
``CE + mu * l_con`` with the model-contrastive term of :mod:`fedagg.task.contrastive`, contrasting
the representation of the model being trained with the round's global model (positive) and
with the client's previous local model (negative; the client's state, kept by fedagg's
per-client state store). Official code: QinbinLi/MOON ``main.py`` @ 8fcba3c (``--mu`` default 1,
``--temperature`` 0.5, ``--model_buffer_size`` 1); fedagg keeps one previous model per client.

Where fedagg differs from the official code (docs/algorithms.md, section 13):

* by default no projection head (as FedDisco's code, which every ``compare_drift`` rule follows): the
  representation is the model's last hidden layer (``represent``); ``model.projection_dim`` = P > 0 puts
  the official ``ModelFedCon`` head on the model (h -> d x d -> ReLU -> d x P = z -> P x classes) and
  MOON contrasts z (:class:`fedagg.task.models.ProjectionHead`);
* a client's first round has no previous model, so no negative and the term is 0 -- the official
  code's round 1 (empty model pool); the official code later contrasts a client not yet
  sampled with its randomly initialised net, fedagg with nothing (its first round);
* the official local optimiser is SGD with momentum 0.9 and weight decay 1e-5; fedagg uses
  ``train.*``.
"""
from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Ge, Gt

from ..task.correction import missing_term_problem
from .base import AggregatorContext, ClientUpdate
from .fedavg import FedAvg
from .registry import register


@register("moon")
class Moon(FedAvg):
    client_state = True
    needs_fedagg_client = True

    def __init__(self, ctx: AggregatorContext, mu: Annotated[float, Ge(0)] = 1.0,
                 temperature: Annotated[float, Gt(0)] = 0.5, **kw: Any) -> None:
        super().__init__(ctx, **kw)
        if not float(mu) >= 0:
            raise ValueError(f"aggregator.mu={mu} must be >= 0 (MOON's contrastive weight)")
        if not float(temperature) > 0:
            raise ValueError(f"aggregator.temperature={temperature} must be > 0 (MOON's tau)")
        self.mu, self.temperature = float(mu), float(temperature)

    def client_terms(self) -> dict[str, str | float]:
        return {"rule": "moon", "mu": self.mu, "temperature": self.temperature}

    def update_problem(self, update: ClientUpdate) -> str | None:
        return missing_term_problem("moon", "the model-contrastive term", update.extras)
