"""Local training and evaluation (torch only; no Flower)."""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..seeding import torch_generator
from .contrastive import contrastive_loss
from .correction import Correction
from .work import planned_steps, round_lr  # noqa: F401 - round_lr: imported from here too

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``) or ``adam`` (torch's defaults: betas (0.9,
    0.999), eps 1e-8; ``momentum`` is SGD's and is not used). A client's
    optimiser state starts fresh every round, as clients keep no state."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"train.optimizer='{name}' is not known; valid choices: {', '.join(OPTIMIZERS)}")


@dataclass
class TrainResult:
    loss: float
    accuracy: float
    steps: int


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 1,
    steps: int = 0,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    optimizer: str = "sgd",
    work_fraction: float = 1.0,
    seed: int = 0,
    round: int = 0,
    client: int = 0,
    device: str = "cpu",
    correction: Correction | None = None,
) -> TrainResult:
    """Minibatch SGD (or Adam: ``optimizer="adam"``) on (x, y) at learning
    rate ``lr`` (the round's, see ``round_lr``).

    ``steps > 0`` runs exactly that many minibatch steps (FedAU's I), cycling
    over reshuffled epochs; otherwise ``epochs`` full passes. ``work_fraction``
    < 1 does only that share of the steps, at least one (a straggler's partial
    work, a client that drops out mid-round). The shuffling order comes
    from the named stream (seed, "shuffle", round, client). ``proximal_mu``
    adds FedProx's (mu/2)||w - w_global||^2. ``correction``: SCAFFOLD's / FedAvg-M's term in
    every step (:mod:`fedagg.task.correction`).
    """
    model.to(device).train()
    gen = torch_generator(seed, "shuffle", round, client)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    n = len(yt)
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    loss_fn = nn.CrossEntropyLoss()
    terms = _terms(model, correction, lr, device)
    moon = _moon_models(model, correction, device)
    total_steps = planned_steps(n, epochs=epochs, steps=steps, batch_size=batch_size, work_fraction=work_fraction)
    done, loss_sum, correct, seen = 0, 0.0, 0, 0
    while done < total_steps:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            if done >= total_steps:
                break
            idx = perm[start : start + batch_size]
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad(set_to_none=True)
            if moon is not None:
                z, out = model.represent(xb)  # type: ignore[operator]
                loss = loss_fn(out, yb)
                with torch.no_grad():
                    z_glob = moon[0].represent(xb)[0]  # type: ignore[operator]
                    z_prev = None if moon[1] is None else moon[1].represent(xb)[0]  # type: ignore[operator]
                assert correction is not None
                loss = loss + correction.mu * contrastive_loss(z, z_glob, z_prev, correction.temperature)
            else:
                out = model(xb)
                loss = loss_fn(out, yb)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            if terms is not None:
                _apply_terms(terms, correction)  # type: ignore[arg-type]
            opt.step()
            if terms is not None and correction is not None and correction.post_step:
                with torch.no_grad():
                    for p, lcd in terms:
                        p.sub_(lcd)
            done += 1
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
    model.to("cpu")
    return TrainResult(loss=loss_sum / max(seen, 1), accuracy=correct / max(seen, 1), steps=done)


_Terms = list[tuple[nn.Parameter, torch.Tensor]]


def _moon_models(model: nn.Module, corr: Correction | None, device: str) -> tuple[nn.Module, nn.Module | None] | None:
    """MOON's frozen (global model, previous local model or None) -- None: no MOON term (or mu = 0)."""
    if corr is None or corr.rule != "moon" or corr.mu == 0.0:
        return None
    glob = copy.deepcopy(model).eval()
    for p in glob.parameters():
        p.requires_grad_(False)
    prev = None
    if corr.c_i is not None:
        prev = copy.deepcopy(glob)
        with torch.no_grad():
            named = dict(prev.named_parameters())
            for n in corr.names:
                named[n].copy_(torch.as_tensor(np.asarray(corr.c_i[n])))
    return glob, prev


def _terms(model: nn.Module, corr: Correction | None, lr: float, device: str) -> list | None:  # type: ignore[type-arg]
    """Per parameter the tensors the correction needs: (p, lr*(c - c_i)) in the post-step form,
    (p, c - c_i or None, g or None) in the mixing form."""
    if corr is None or not corr.gradient_terms:
        return None
    named = dict(model.named_parameters())

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a)).to(device)

    if corr.post_step:
        assert corr.c_diff is not None
        return [(named[n], t(corr.c_diff[n]) * lr) for n in corr.names]
    return [(named[n], None if corr.c_diff is None else t(corr.c_diff[n]), None if corr.g is None else t(corr.g[n]))
            for n in corr.names]


def _apply_terms(terms: list, corr: Correction) -> None:  # type: ignore[type-arg]
    """The mixing form: grad <- beta (grad + c - c_i) + (1 - beta) g, before the optimiser's step."""
    if corr.post_step:
        return
    b = corr.beta
    for p, cd, g in terms:
        if p.grad is None:
            continue
        if cd is not None:
            p.grad.add_(cd)
        if g is not None:
            p.grad.mul_(b).add_(g, alpha=1.0 - b)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on (x, y)."""
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    loss_sum, correct = 0.0, 0
    for s in range(0, len(yt), batch_size):
        out = model(xt[s : s + batch_size])
        loss_sum += float(nn.functional.cross_entropy(out, yt[s : s + batch_size], reduction="sum"))
        correct += int((out.argmax(1) == yt[s : s + batch_size]).sum())
    return loss_sum / len(yt), correct / len(yt)


def get_params(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_params(model: nn.Module, params: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params.items()})
