"""FedLAW (Li et al., ICML 2023, arXiv 2302.10911) and its two-stage SWA
variant ``fedlaw_swa``; see docs/algorithms.md.

Learn, each round, a global shrinking factor γ and relative weights λ on the
server's proxy set, then aggregate the learnable parameters as

    θ_g = γ · Σ_{k∈S_t} λ_k θ_k

* ``param='exp'`` (default): λ = softmax(u), γ = exp(g), initialised at
  u_k = log p_k (p_k = N_k/Σ N_j), g = 0 -- the first inner step starts
  exactly at FedAvg (λ = p, γ = 1). ``'quad'``: λ_k = u_k²/Σ u_j², γ = g²,
  initialised at u_k = √(1/|S_t|), g = 1 (uniform λ).
* inner optimisation (``fedlaw``): ``server_epochs`` passes over the proxy
  set in minibatches of ``batch_size`` (order from ``rng(ctx.seed, "fedlaw",
  round)``; the trailing partial batch is kept, even of one sample, as the
  official DataLoader does), cross-entropy of the model evaluated
  functionally (``torch.func.functional_call``) at w(u, g), Adam(betas=(0.5,
  0.999)) on (u, g) only, with the official StepLR schedule: the learning
  rate of server epoch e is ``server_lr · 0.5^⌊e/20⌋``. γ and λ restart
  every round.
* ``server_lr=None`` (default) is the official per-dataset value: 0.01 on
  CIFAR-10 (``ctx.dataset == 'cifar10'``), 0.005 on every other dataset.
* ``fedlaw_swa`` (the official ``whether_swa=swa``): two stages of
  ``server_epochs // 2`` epochs each. Stage 1 learns λ alone (γ ≡ 1) with a
  cosine schedule (T_max = 100 epochs) until epoch ``swa_start`` (0-based), then
  the SWA schedule (cosine anneal over 10 epochs towards ``swa_lr``); after
  every epoch e > ``swa_start`` it adds u to an equal-weight running average,
  and λ = softmax(that average) -- the *initial* u when stage 1 is too short
  to reach an average (the official code's behaviour). Stage 2 learns γ alone
  with λ fixed, a fresh Adam and the StepLR schedule.
* the server model (``ctx.model_fn()``) is in train mode: its BN layers use
  batch statistics and update its running buffers, which start each round
  from the global model's. Output: learnable tensors (float, non-BN-buffer)
  = γ*Σλ*θ_k; BN float buffers = the server model's after the optimisation
  (= the global's when ``server_epochs=0``); integer buffers = the global's.
  A trailing proxy batch of one sample is dropped only when the model has
  BatchNorm layers (train-mode BatchNorm cannot use one sample; the official
  code would stop with an error there).
* ``proxy_fraction`` is read by the host to carve the proxy set; stored only.

Metrics: ``weights`` = λ*, ``fedlaw_gamma`` = γ*, ``fedlaw_proxy_loss_first``
/ ``fedlaw_proxy_loss_last`` (mean proxy loss of the first / last epoch).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from ..seeding import rng
from .base import (
    Aggregator,
    AggregatorContext,
    is_float,
    is_learnable,
    sorted_updates,
    weights_metrics,
)
from .registry import register

STEP_EPOCHS, STEP_GAMMA = 20, 0.5  # official StepLR(step_size=20, gamma=0.5), stepped per epoch
COSINE_T_MAX, SWA_ANNEAL_EPOCHS = 100, 10  # official CosineAnnealingLR(T_max=100), SWALR's default
BETAS = (0.5, 0.999)


def official_server_lr(dataset: str) -> float:
    """The official code's hard-coded server lr: 0.01 on CIFAR-10, else 0.005."""
    return 0.01 if dataset == "cifar10" else 0.005


def step_lr(base: float, epoch: int) -> float:
    """Learning rate of server epoch ``epoch`` (0-based) under StepLR(20, 0.5)."""
    return base * STEP_GAMMA ** (epoch // STEP_EPOCHS)


def swa_stage_lr(base: float, epoch: int, swa_start: int, swa_lr: float) -> float:
    """Learning rate of stage-1 epoch ``epoch`` (0-based) in the SWA variant:
    cosine annealing (T_max = 100) stepped after epochs 0..swa_start, then the
    SWA schedule stepped after every later epoch, annealing (cosine, 10
    epochs) from the lr it found towards ``swa_lr``."""
    k = epoch - (swa_start + 1)  # SWA steps taken before this epoch
    cos_steps = min(epoch, swa_start + 1)
    lr = base * (1 + math.cos(math.pi * cos_steps / COSINE_T_MAX)) / 2
    if k <= 0:
        return lr
    a = (1 - math.cos(math.pi * min(1.0, k / SWA_ANNEAL_EPOCHS))) / 2
    return swa_lr * a + lr * (1 - a)


@register("fedlaw")
class FedLAW(Aggregator):
    needs_proxy = True  # λ and γ are learned on the server's proxy set
    needs_model_fn = True  # ... through a functional forward of the model

    def __init__(
        self,
        ctx: AggregatorContext,
        server_epochs: int = 20,
        server_lr: float | None = None,
        batch_size: int = 128,
        param: str = "exp",
        proxy_fraction: float = 0.02,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        if server_lr is None:
            server_lr = official_server_lr(ctx.dataset)
        if param not in ("exp", "quad"):
            raise ValueError(f"aggregator.param='{param}' is not one of exp, quad")
        if server_epochs < 0 or batch_size < 1 or not server_lr > 0:
            raise ValueError("aggregator: need server_epochs >= 0, batch_size >= 1, server_lr > 0")
        if not 0 < proxy_fraction < 1:
            raise ValueError(f"aggregator.proxy_fraction={proxy_fraction} must be in (0, 1)")
        if self.ctx.model_fn is None:
            raise ValueError("fedlaw needs ctx.model_fn (a torch model factory); none was given")
        if self.ctx.proxy_data is None:
            raise ValueError(
                "fedlaw needs the server's proxy set ctx.proxy_data=(x, y); none was given "
                "(the host carves it with aggregator.proxy_fraction)"
            )
        x, y = self.ctx.proxy_data
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"fedlaw: proxy_data has {len(x)} inputs and {len(y)} labels")
        self.model_fn = self.ctx.model_fn
        self.server_epochs, self.server_lr = int(server_epochs), float(server_lr)
        self.batch_size, self.param, self.proxy_fraction = int(batch_size), param, float(proxy_fraction)
        self.proxy_x = torch.as_tensor(np.asarray(x))
        self.proxy_y = torch.as_tensor(np.asarray(y)).long()
        self.model: torch.nn.Module | None = None

    def _server_model(self, global_params) -> torch.nn.Module:
        if self.model is None:
            self.model = self.model_fn()
        state = self.model.state_dict()
        if set(state) != set(global_params):
            raise ValueError(
                "fedlaw: the model from ctx.model_fn() and the global parameters differ "
                f"(only in model: {sorted(set(state) - set(global_params))}, "
                f"only in params: {sorted(set(global_params) - set(state))})"
            )
        self.model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in global_params.items()})
        self.model.train()
        return self.model

    # -- parameterisation ------------------------------------------------------
    def _init_u(self, n: np.ndarray) -> torch.Tensor:
        if self.param == "exp":
            p = n / n.sum()
            u = torch.tensor(np.log(np.maximum(p, 1e-12)), dtype=torch.float64)
        else:
            u = torch.full((len(n),), float(np.sqrt(1.0 / len(n))), dtype=torch.float64)
        return u.requires_grad_(True)

    def _init_g(self) -> torch.Tensor:
        return torch.tensor(0.0 if self.param == "exp" else 1.0, dtype=torch.float64).requires_grad_(True)

    def _lam(self, u: torch.Tensor) -> torch.Tensor:
        return torch.softmax(u, 0) if self.param == "exp" else u * u / torch.sum(u * u)

    def _gamma(self, g: torch.Tensor) -> torch.Tensor:
        return torch.exp(g) if self.param == "exp" else g * g

    # -- the proxy passes -------------------------------------------------------
    def _batches(self, rnd: int, epochs: int, has_bn: bool) -> list[list[np.ndarray]]:
        """Minibatch index lists for ``epochs`` server epochs of round ``rnd``."""
        g = rng(self.ctx.seed, "fedlaw", rnd)
        n, B = len(self.proxy_y), self.batch_size
        out = []
        for _ in range(epochs):
            order = g.permutation(n)
            bs = [order[i : i + B] for i in range(0, n, B)]
            if has_bn and len(bs) > 1 and len(bs[-1]) == 1:
                bs.pop()  # train-mode BatchNorm cannot normalise one sample
            out.append(bs)
        return out

    def _fit(
        self,
        model: torch.nn.Module,
        weights: Callable[[], dict[str, torch.Tensor]],
        variables: list[torch.Tensor],
        batches: list[list[np.ndarray]],
        lr_at: Callable[[int], float],
        after_epoch: Callable[[int], None] | None = None,
    ) -> list[float]:
        """Adam on ``variables``; epoch e runs at ``lr_at(e)``. Mean loss per epoch."""
        opt = torch.optim.Adam(variables, lr=lr_at(0), betas=BETAS)
        first = next(iter(model.parameters()), None)
        x_all = self.proxy_x.to(first.dtype) if first is not None else self.proxy_x
        losses: list[float] = []
        for e, bs in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(e)
            tot, cnt = 0.0, 0
            for idx in bs:
                logits = functional_call(model, weights(), (x_all[idx],), strict=False)
                loss = torch.nn.functional.cross_entropy(logits, self.proxy_y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
                cnt += len(idx)
            losses.append(tot / max(cnt, 1))
            if after_epoch is not None:
                after_epoch(e)
        return losses

    def learn(
        self, model: torch.nn.Module, combined: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        n: np.ndarray, rnd: int, has_bn: bool,
    ) -> tuple[np.ndarray, float, list[float]]:
        """(λ*, γ*, per-epoch proxy losses); ``combined(c)`` is Σ_k c_k θ_k."""
        u, g = self._init_u(n), self._init_g()
        batches = self._batches(rnd, self.server_epochs, has_bn)
        losses = self._fit(
            model, lambda: combined(self._gamma(g) * self._lam(u)), [u, g], batches,
            lambda e: step_lr(self.server_lr, e),
        )
        with torch.no_grad():
            return self._lam(u).numpy().astype(np.float64), float(self._gamma(g)), losses

    def aggregate(self, global_params, updates, info):
        if not updates:
            return global_params, {"weights": [], "fedlaw_gamma": 1.0}
        updates = sorted_updates(updates)
        model = self._server_model(global_params)
        names = [k for k, v in global_params.items() if is_learnable(k, v)]
        params = dict(model.named_parameters())
        not_param = [k for k in names if k not in params]
        if not_param:
            raise ValueError(f"fedlaw: learnable tensors {not_param} are not model parameters")
        # θ_k stacked per tensor, in the model's dtype: [K, *shape] (constants)
        stacks = {
            k: torch.as_tensor(np.stack([u.params[k] for u in updates])).to(params[k].dtype)
            for k in names
        }
        n = np.array([u.num_examples for u in updates], dtype=np.float64)

        def combined(c: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: torch.tensordot(c.to(st.dtype), st, dims=([0], [0])) for k, st in stacks.items()}

        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        lam, gamma, losses = self.learn(model, combined, n, info.round, has_bn)
        with torch.no_grad():
            w = combined(torch.as_tensor(gamma * lam, dtype=torch.float64))
            buffers = {k: b.detach().cpu().numpy() for k, b in model.named_buffers()}
        out = {}
        for k, ref in global_params.items():
            if k in w:
                out[k] = w[k].cpu().numpy().astype(ref.dtype)
            elif is_float(ref) and k in buffers:
                out[k] = buffers[k].astype(ref.dtype).reshape(ref.shape)
            else:
                out[k] = np.array(ref, copy=True)
        metrics = weights_metrics(updates, lam)
        metrics["fedlaw_gamma"] = gamma
        if losses:
            metrics["fedlaw_proxy_loss_first"] = losses[0]
            metrics["fedlaw_proxy_loss_last"] = losses[-1]
        return out, metrics


@register("fedlaw_swa")
class FedLAWSWA(FedLAW):
    """FedLAW's two-stage SWA variant (module docstring): λ first (cosine,
    then SWA averaging of u after epoch ``swa_start``), then γ alone."""

    def __init__(
        self,
        ctx: AggregatorContext,
        server_epochs: int = 20,
        server_lr: float | None = None,
        batch_size: int = 128,
        param: str = "exp",
        proxy_fraction: float = 0.02,
        swa_start: int = 5,
        swa_lr: float = 0.05,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, server_epochs, server_lr, batch_size, param, proxy_fraction, **kw)
        if swa_start < 0 or not swa_lr > 0:
            raise ValueError(f"aggregator: need swa_start >= 0 (got {swa_start}) and swa_lr > 0 (got {swa_lr})")
        self.swa_start, self.swa_lr = int(swa_start), float(swa_lr)

    def learn(self, model, combined, n, rnd, has_bn):
        half = self.server_epochs // 2
        batches = self._batches(rnd, 2 * half, has_bn)
        # stage 1: λ alone (γ ≡ 1), SWA average of u after every epoch > swa_start
        u = self._init_u(n)
        avg, count = u.detach().clone(), 0

        def snapshot(e: int) -> None:
            nonlocal count
            if e > self.swa_start:
                avg.add_((u.detach() - avg) / (count + 1))
                count += 1

        losses = self._fit(
            model, lambda: combined(self._lam(u)), [u], batches[:half],
            lambda e: swa_stage_lr(self.server_lr, e, self.swa_start, self.swa_lr), snapshot,
        )
        with torch.no_grad():
            lam = self._lam(avg)  # the initial u when no epoch was averaged
        # stage 2: γ alone with λ fixed, StepLR
        g = self._init_g()
        losses += self._fit(
            model, lambda: combined(self._gamma(g) * lam), [g], batches[half:],
            lambda e: step_lr(self.server_lr, e),
        )
        with torch.no_grad():
            return lam.numpy().astype(np.float64), float(self._gamma(g)), losses
