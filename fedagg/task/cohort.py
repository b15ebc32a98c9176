"""Train a cohort of clients as one stacked, vectorised model.

Clients that share the model architecture and the training options (batch
size, learning rate, momentum, weight decay, FedProx mu) are trained
together: their parameters are stacked along a leading client axis
(``torch.func.stack_module_state``) and one forward/backward pass of
``vmap(functional_call(model, ...))`` computes every client's minibatch
gradient at once. The result per client equals
:func:`fedagg.task.train.train_local` (to float rounding):

* each client's minibatch order comes from its own named stream
  ``(seed, "shuffle", round, client)`` with one ``torch.randperm`` per
  epoch and the same batch boundaries (the last batch of an epoch is
  smaller -- padded here, with a per-sample mask, so each client's loss is
  the mean over its own batch);
* unequal shard sizes and unequal step counts (``epochs``, ``steps``,
  ``work_fraction`` of stragglers and dropouts) are handled by masks: a
  client that has done its steps is frozen (parameters and momentum);
* the SGD update is torch.optim.SGD's (dampening 0, no Nesterov), in its
  order: ``d = g + wd*p``; ``buf = d`` on the first step, then
  ``buf = momentum*buf + d``; ``p = p - lr*buf``; FedProx adds
  ``(mu/2)||w - w_start||^2`` to each client's loss (``w_start`` = that
  client's own starting parameters, so clients may start from different
  models, as gossip's nodes do);
* SCAFFOLD's and FedAvg-M's terms (:mod:`fedagg.task.correction`) as train_local applies them:
  the post-step ``p <- p - lr (c - c_i)`` after the SGD update, or the mixed direction
  ``beta (g + c - c_i) + (1 - beta) g_server`` before weight decay and momentum -- per client;
* the loss, accuracy and step count reported per client are train_local's.

:func:`unsupported_reason` says why a model or option cannot be vectorised
(BatchNorm or dropout layers, buffers, an optimiser other than SGD, a model
``vmap`` cannot run); callers then fall back to the per-client path.
:func:`slower_reason` says why a model that can be vectorised is better
trained client by client: ``vmap`` turns 2-D and 3-D convolutions into
grouped convolutions, which on CPU train slower stacked than one client at a
time (``scripts/bench_cohort.py --model cnn lenet5 cnn_fedau``: 1.3-1.5x the
one-by-one time, against 0.4x for the 1-D CNN and 0.2-0.3x for the MLP).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..seeding import torch_generator
from .correction import Correction
from .train import TrainResult
from .work import planned_steps

__all__ = ["Member", "log_fallback_once", "planned_steps", "slower_reason", "train_cohort", "unsupported_reason"]

log = logging.getLogger("fedagg")

_LOGGED: set[str] = set()


def log_fallback_once(reason: str) -> None:
    """Log (once per process and reason) why a cohort trains client by client."""
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        log.info("vectorised cohort training not used: %s; training client by client", reason)


@dataclass
class Member:
    """One client of a cohort: its shard, starting parameters and step budget."""

    client: int
    x: np.ndarray
    y: np.ndarray
    params: dict[str, np.ndarray]
    epochs: int = 1
    steps: int = 0
    work_fraction: float = 1.0
    correction: Correction | None = None  # SCAFFOLD's / FedAvg-M's term (all members have one, or none)
    round: int | None = None  # its shuffle stream's round (None: the cohort's); the asynchronous modes stack versions


_UNSUPPORTED_LAYERS: tuple[tuple[type, str], ...] = (
    (nn.modules.batchnorm._BatchNorm, "BatchNorm in train mode (per-client running statistics)"),
    (nn.modules.dropout._DropoutNd, "dropout (random masks per client)"),
    (nn.Dropout, "dropout (random masks per client)"),
)
_PROBED: dict[tuple[type, str], str | None] = {}


def unsupported_reason(model: nn.Module, *, optimizer: str = "sgd", input_shape: Sequence[int] | None = None) -> str | None:
    """None when ``model`` trained with ``optimizer`` can be vectorised, else why not."""
    if optimizer != "sgd":
        return f"train.optimizer={optimizer} (only SGD is vectorised)"
    for m in model.modules():
        for cls, why in _UNSUPPORTED_LAYERS:
            if isinstance(m, cls) and not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0):
                return f"model {type(model).__name__} has {why}"
    if any(True for _ in model.buffers()):
        return f"model {type(model).__name__} has buffers"
    if input_shape is not None:
        key = (type(model), repr(model) + str(tuple(input_shape)))
        if key not in _PROBED:
            _PROBED[key] = _probe(model, tuple(input_shape))
        return _PROBED[key]
    return None


_SLOWER_STACKED = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def slower_reason(model: nn.Module) -> str | None:
    """Why ``runtime.vectorize=auto`` trains this (vectorisable) model client by client, or None."""
    for m in model.modules():
        if isinstance(m, _SLOWER_STACKED):
            return (f"model {type(model).__name__} has {type(m).__name__} layers, which train slower stacked "
                    "than client by client on CPU (runtime.vectorize=true forces stacking)")
    return None


def _probe(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Run the stacked model once on zeros: a model vmap cannot handle fails here."""
    try:
        params, _ = stack_module_state([model, model])
        x = torch.zeros(2, 2, *input_shape)
        out = vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)
        if out.dim() != 3 or out.shape[:2] != (2, 2):
            return f"model {type(model).__name__} output shape {tuple(out.shape)} is not (batch, classes)"
    except Exception as e:  # noqa: BLE001 - any failure means: not vectorisable
        return f"torch.func.vmap cannot run model {type(model).__name__} ({type(e).__name__}: {str(e)[:120]})"
    return None


def _batches(members: Sequence[Member], totals: list[int], batch_size: int, seed: int, rnd: int,
             n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and mask tensors [T_max, K, B]: client k's b-th sample of step t
    is its sample ``idx[t, k, b]`` where ``mask[t, k, b]``. Same random order
    as train_local: one randperm per epoch from the client's shuffle stream."""
    t_max, k = max(totals), len(members)
    idx = torch.zeros(t_max, k, batch_size, dtype=torch.long)
    mask = torch.zeros(t_max, k, batch_size, dtype=torch.bool)
    for j, (m, total) in enumerate(zip(members, totals)):
        n = len(m.y)
        if total == 0:
            continue
        gen = torch_generator(seed, "shuffle", rnd if m.round is None else m.round, m.client)
        nb = -(-n // batch_size)
        pad = nb * batch_size - n
        done = 0
        while done < total:
            perm = torch.randperm(n, generator=gen)
            take = min(nb, total - done)
            rows = torch.cat([perm, torch.zeros(pad, dtype=torch.long)]).view(nb, batch_size)[:take]
            valid = torch.ones(nb * batch_size, dtype=torch.bool)
            if pad:
                valid[n:] = False
            idx[done : done + take, j] = rows
            mask[done : done + take, j] = valid.view(nb, batch_size)[:take]
            done += take
    return idx, mask


def train_cohort(
    model: nn.Module,
    members: Sequence[Member],
    *,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    seed: int = 0,
    round: int = 0,
    device: str = "cpu",
) -> list[tuple[dict[str, np.ndarray], TrainResult]]:
    """Train every member as train_local would; returns (parameters, result) per member, in order.

    ``model`` gives the architecture only (its own parameters are not used).
    Every member's ``params`` must have the model's parameter names and shapes.
    """
    if not members:
        return []
    names = [n for n, _ in model.named_parameters()]
    for m in members:
        if len(m.y) == 0:
            raise ValueError(f"client {m.client} has no training examples")
    k = len(members)
    totals = [planned_steps(len(m.y), epochs=m.epochs, steps=m.steps, batch_size=batch_size,
                            work_fraction=m.work_fraction) for m in members]
    n_max = max(len(m.y) for m in members)
    shape = members[0].x.shape[1:]
    xs = np.zeros((k, n_max, *shape), dtype=np.float32)
    ys = np.zeros((k, n_max), dtype=np.int64)
    for j, m in enumerate(members):
        xs[j, : len(m.y)] = m.x
        ys[j, : len(m.y)] = m.y
    dev = torch.device(device)
    X = torch.from_numpy(xs).to(dev)
    Y = torch.from_numpy(ys).to(dev)
    P = {n: torch.from_numpy(np.stack([np.asarray(m.params[n], dtype=np.float32) for m in members])).to(dev)
         for n in names}
    anchor = {n: p.clone() for n, p in P.items()} if proximal_mu > 0 else None
    # momentum buffers start at 0: momentum*0 + d == d exactly, torch's first-step buf = d
    bufs = {n: torch.zeros_like(p) for n, p in P.items()} if momentum != 0 else {}
    corr = members[0].correction
    if any((m.correction is None) != (corr is None) for m in members):
        raise ValueError("a cohort's members either all have a correction term or none")
    LCD: dict[str, torch.Tensor] = {}  # post-step: lr * (c - c_i), stacked
    CD: dict[str, torch.Tensor] = {}  # mixing: c - c_i, stacked
    G: dict[str, torch.Tensor] = {}  # mixing: the server's momentum, one for all
    if corr is not None:
        cs = [m.correction for m in members]
        for n in corr.names:
            if corr.c_diff is not None:
                cd = torch.from_numpy(np.stack([c.c_diff[n] for c in cs])).to(dev)  # type: ignore[union-attr, index]
                if corr.post_step:
                    LCD[n] = cd * lr
                else:
                    CD[n] = cd
            if corr.g is not None:
                G[n] = torch.as_tensor(np.asarray(corr.g[n])).to(dev)
    idx_all, mask_all = _batches(members, totals, batch_size, seed, round, n_max)
    idx_all, mask_all = idx_all.to(dev), mask_all.to(dev)
    totals_np = np.asarray(totals)
    fwd = vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, 0))
    loss_sum = torch.zeros(k, dtype=torch.float64, device=dev)
    correct = torch.zeros(k, dtype=torch.long, device=dev)
    seen = torch.zeros(k, dtype=torch.long, device=dev)
    was_training = model.training
    model.train()
    for t in range(max(totals)):
        # only the clients still working take part in this step (stacked: a fixed subset per step)
        act = np.flatnonzero(totals_np > t)
        full = len(act) == k
        a = torch.from_numpy(act).to(dev)
        idx, mask = (idx_all[t], mask_all[t]) if full else (idx_all[t][a], mask_all[t][a])
        xb, yb = X[a[:, None], idx], Y[a[:, None], idx]
        ps = {n: (P[n] if full else P[n][a]).detach().requires_grad_(True) for n in names}
        cnt = mask.sum(1)
        out = fwd(ps, xb)  # [K_active, B, C]
        ce = nn.functional.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none").view(len(act), -1)
        loss = (ce * mask.to(torch.float32)).sum(1) / cnt.clamp(min=1)
        if anchor is not None:
            prox = sum(((ps[n] - (anchor[n] if full else anchor[n][a])) ** 2).flatten(1).sum(1) for n in names)
            loss = loss + 0.5 * proximal_mu * prox
        grads = torch.autograd.grad(loss.sum(), [ps[n] for n in names])
        with torch.no_grad():
            for n, g in zip(names, grads):
                p = ps[n].detach()
                if n in CD or n in G:  # beta (grad + c - c_i) + (1 - beta) g_server, as train_local
                    assert corr is not None
                    if n in CD:
                        g = g.add(CD[n] if full else CD[n][a])
                    if n in G:
                        g = g.mul(corr.beta).add(G[n], alpha=1.0 - corr.beta)
                d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
                if momentum != 0:
                    d = (bufs[n] if full else bufs[n][a]).mul(momentum).add_(d)
                    if full:
                        bufs[n] = d
                    else:
                        bufs[n].index_copy_(0, a, d)
                new_p = p.add(d, alpha=-lr)
                if n in LCD:  # SCAFFOLD's post-step correction, as train_local
                    new_p = new_p.sub(LCD[n] if full else LCD[n][a])
                if full:
                    P[n] = new_p
                else:
                    P[n].index_copy_(0, a, new_p)
            loss_sum.index_add_(0, a, loss.detach().double() * cnt)
            correct.index_add_(0, a, ((out.argmax(-1) == yb) & mask).sum(1))
            seen.index_add_(0, a, cnt)
    model.train(was_training)
    loss_np, correct_np, seen_np = loss_sum.cpu().numpy(), correct.cpu().numpy(), seen.cpu().numpy()
    arrays = {n: P[n].detach().cpu().numpy() for n in names}
    results = []
    for j in range(k):
        s = max(int(seen_np[j]), 1)
        res = TrainResult(loss=float(loss_np[j]) / s, accuracy=int(correct_np[j]) / s, steps=totals[j])
        results.append(({n: arrays[n][j] for n in names}, res))
    return results

