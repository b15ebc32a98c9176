"""FedLAW (Li et al., ICML 2023, arXiv 2302.10911), ALGORITHMS.md §4.

Learn, each round, a global shrinking factor γ and relative weights λ on the
server's proxy set, then aggregate the learnable parameters as

    θ_g = γ · Σ_{k∈S_t} λ_k θ_k

* ``param='exp'`` (default): λ = softmax(u), γ = exp(g), initialised at
  u_k = log p_k (p_k = N_k/Σ N_j), g = 0 -- the first inner step starts
  exactly at FedAvg (λ = p, γ = 1). ``'quad'``: λ_k = u_k²/Σ u_j², γ = g²,
  initialised at u_k = √(1/|S_t|), g = 1 (uniform λ).
* inner optimisation: ``server_epochs`` passes over the proxy set in
  minibatches of ``batch_size`` (order from ``rng(ctx.seed, "fedlaw",
  round)``), cross-entropy of the model evaluated functionally
  (``torch.func.functional_call``) at w(u, g), Adam(lr=``server_lr``,
  betas=(0.5, 0.999)) on (u, g) only. γ and λ restart every round.
* the server model (``ctx.model_fn()``) is in train mode: its BN layers use
  batch statistics and update its running buffers, which start each round
  from the global model's. Output: learnable tensors (float, non-BN-buffer)
  = γ*Σλ*θ_k; BN float buffers = the server model's after the optimisation
  (= the global's when ``server_epochs=0``); integer buffers = the global's.
* a trailing proxy minibatch of a single sample is skipped when there are
  other batches (train-mode BatchNorm cannot use one sample).
* ``proxy_fraction`` is read by the host to carve the proxy set; stored only.

Metrics: ``weights`` = λ*, ``fedlaw_gamma`` = γ*, ``fedlaw_proxy_loss_first``
/ ``fedlaw_proxy_loss_last`` (mean proxy loss of the first / last epoch).
"""
from __future__ import annotations

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


@register("fedlaw")
class FedLAW(Aggregator):
    streaming = False
    needs_proxy = True  # λ and γ are learned on the server's proxy set
    needs_model_fn = True  # ... through a functional forward of the model

    def __init__(
        self,
        ctx: AggregatorContext,
        server_epochs: int = 20,
        server_lr: float = 0.01,
        batch_size: int = 128,
        param: str = "exp",
        proxy_fraction: float = 0.02,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
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
        self.server_epochs, self.server_lr = int(server_epochs), float(server_lr)
        self.batch_size, self.param, self.proxy_fraction = int(batch_size), param, float(proxy_fraction)
        self.proxy_x = torch.as_tensor(np.asarray(x))
        self.proxy_y = torch.as_tensor(np.asarray(y)).long()
        self.model: torch.nn.Module | None = None

    def _server_model(self, global_params) -> torch.nn.Module:
        if self.model is None:
            assert self.ctx.model_fn is not None  # checked in __init__
            self.model = self.ctx.model_fn()
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

    def _init(self, n: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        K = len(n)
        if self.param == "exp":
            p = n / n.sum()
            u = torch.tensor(np.log(np.maximum(p, 1e-12)), dtype=torch.float64)
            g = torch.zeros((), dtype=torch.float64)
        else:
            u = torch.full((K,), float(np.sqrt(1.0 / K)), dtype=torch.float64)
            g = torch.ones((), dtype=torch.float64)
        return u.requires_grad_(True), g.requires_grad_(True)

    def _lam_gamma(self, u: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.param == "exp":
            return torch.softmax(u, 0), torch.exp(g)
        return u * u / torch.sum(u * u), g * g

    def _batches(self, rnd: int) -> list[list[np.ndarray]]:
        """Minibatch index lists for every server epoch of round ``rnd``."""
        g = rng(self.ctx.seed, "fedlaw", rnd)
        n, B = len(self.proxy_y), self.batch_size
        epochs = []
        for _ in range(self.server_epochs):
            order = g.permutation(n)
            bs = [order[i : i + B] for i in range(0, n, B)]
            if len(bs) > 1 and len(bs[-1]) == 1:
                bs.pop()
            epochs.append(bs)
        return epochs

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
        u_, g_ = self._init(n)
        opt = torch.optim.Adam([u_, g_], lr=self.server_lr, betas=(0.5, 0.999))

        def combined(lam: torch.Tensor, gamma: torch.Tensor) -> dict[str, torch.Tensor]:
            out = {}
            for k, st in stacks.items():
                c = (gamma * lam).to(st.dtype)
                out[k] = torch.tensordot(c, st, dims=([0], [0]))
            return out

        first = next(iter(params.values()), None)
        x_all = self.proxy_x.to(first.dtype) if first is not None else self.proxy_x
        epoch_losses: list[float] = []
        for batches in self._batches(info.round):
            tot, cnt = 0.0, 0
            for idx in batches:
                xb, yb = x_all[idx], self.proxy_y[idx]
                lam, gamma = self._lam_gamma(u_, g_)
                logits = functional_call(model, combined(lam, gamma), (xb,), strict=False)
                loss = torch.nn.functional.cross_entropy(logits, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
                cnt += len(idx)
            epoch_losses.append(tot / max(cnt, 1))
        with torch.no_grad():
            lam, gamma = self._lam_gamma(u_, g_)
            w = combined(lam, gamma)
            buffers = {k: b.detach().cpu().numpy() for k, b in model.named_buffers()}
        out = {}
        for k, ref in global_params.items():
            if k in w:
                out[k] = w[k].cpu().numpy().astype(ref.dtype)
            elif is_float(ref) and k in buffers:
                out[k] = buffers[k].astype(ref.dtype).reshape(ref.shape)
            else:
                out[k] = np.array(ref, copy=True)
        lam_np = lam.detach().cpu().numpy().astype(np.float64)
        metrics = weights_metrics(updates, lam_np)
        metrics["fedlaw_gamma"] = float(gamma)
        if epoch_losses:
            metrics["fedlaw_proxy_loss_first"] = epoch_losses[0]
            metrics["fedlaw_proxy_loss_last"] = epoch_losses[-1]
        return out, metrics
