"""MOON's model-contrastive term (Li, He, Song, CVPR 2021), in local training (torch only).

For a batch, z = the representation of the model being trained, z_glob that of the round's
global model (frozen), z_prev that of the client's previous local model (frozen)::

    l_con = -log( exp(sim(z, z_glob)/tau) / (exp(sim(z, z_glob)/tau) + exp(sim(z, z_prev)/tau)) )

averaged over the batch, sim = cosine similarity; the local loss is CE + mu * l_con. As the
official code (QinbinLi/MOON ``main.py::train_net_fedcon`` @ 8fcba3c) writes it: a cross-entropy
over the logits [sim(z, z_glob), sim(z, z_prev)] / tau with label 0. A client without a previous
model (its first round) has no negative: the official code's logits are then the positive alone,
whose cross-entropy is 0 -- the round is plain CE.

The representation is a model's ``represent(x) -> (z, logits)`` (:data:`REPRESENTED`): the last hidden
layer by default (no projection head, as FedDisco's code), or, with ``model.projection_dim`` = P > 0, the
output of MOON's projection head (as MOON's code, ``ModelFedCon``; :class:`fedagg.task.models.ProjectionHead`)
-- docs/algorithms.md, section 13.
"""
from __future__ import annotations

import torch
from torch import nn

REPRESENTED = ("mlp", "cnn", "lenet5")  # built-in models with ``represent`` (mlp: depth >= 2)
UNSTACKED = ("MOON's contrastive term needs each client's own frozen global and previous models: "
             "trained per client")  # why a MOON round's clients are not vectorised


def has_representation(model: nn.Module) -> bool:
    """Whether ``model`` exposes a learnt representation MOON can contrast."""
    return callable(getattr(model, "represent", None)) and int(getattr(model, "depth", 2)) >= 2


def contrastive_loss(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor | None,
                     temperature: float) -> torch.Tensor:
    """The batch mean of l_con (0 without a previous model)."""
    pos = nn.functional.cosine_similarity(z, z_glob, dim=-1).reshape(-1, 1)
    if z_prev is None:
        return torch.zeros((), dtype=z.dtype, device=z.device)
    neg = nn.functional.cosine_similarity(z, z_prev, dim=-1).reshape(-1, 1)
    logits = torch.cat((pos, neg), dim=1) / temperature
    labels = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    return nn.functional.cross_entropy(logits, labels)
