"""IDA -- Inverse Distance Aggregation (Yeganeh et al., MICCAI-W 2020,
arXiv 2008.07665); docs/algorithms.md §6.

    θ̄   = (1/|S_t|) Σ_k θ_k                  (unweighted mean, the reference)
    d_k = max(‖θ_k − θ̄‖, eps)
    α_k ∝ c_k,  Σ α_k = 1,  θ_g = Σ_k α_k θ_k

with c_k by ``variant``:

* ``ida`` (default): c_k = 1/d_k
* ``intrac``: c_k = 1/max(acc_k, eps), acc_k = the client's ``train_accuracy``
* ``ida_intrac``: c_k = (1/d_k)·(1/max(acc_k, eps))
* ``ida_fedavg``: c_k = N_k/d_k

The paper could not be checked (no official code; everything beyond the
abstract is recalled), so these defaults are choices:

* ``norm='l2'`` over the concatenation of the tensors (``granularity='model'``):
  the natural reading of "distance between parameters"; ``l1`` is offered.
* ``granularity='layer'``: every included tensor gets its own α from its own
  distances; tensors outside ``include`` (BN running statistics; biases
  etc. with ``include='weights'``) take the whole-model α computed over the
  included tensors. The ``weights`` metric then reports the mean of the
  per-tensor α (still sums to 1).
* ``include='learnable'`` (float, non-BN-buffer tensors) enter the distance;
  ``'weights'`` = learnable tensors with ndim ≥ 2 (conv/linear kernels) only.
  BN running statistics never enter the distance but are averaged with the
  same α; integer tensors are never averaged (taken from the client with the
  largest α, as :func:`weighted_average` does).
* the reference is the *unweighted* mean (as recalled from the paper, unverified).
* ``eps=1e-12`` (absolute) floors distances and accuracies: when every
  distance is below eps (identical models) the weights are uniform; a single
  client exactly at the mean would take almost all the weight -- with
  real, trained models this does not happen.
* INTRAC's transform is unknown: a plain inverse, no clipping.

|S_t| = 1 returns that model; |S_t| = 2 gives uniform weights (both
distances are half the gap). Stateless: nothing is kept across rounds.
"""
from __future__ import annotations

import numpy as np

from .base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    Params,
    chunked,
    is_float,
    is_learnable,
    sorted_updates,
    weighted_sum,
    weights_metrics,
)
from .registry import register

VARIANTS = ("ida", "intrac", "ida_intrac", "ida_fedavg")


@register("ida")
class IDA(Aggregator):

    def __init__(
        self,
        ctx: AggregatorContext,
        variant: str = "ida",
        norm: str = "l2",
        granularity: str = "model",
        include: str = "learnable",
        eps: float = 1e-12,
        **kw: object,
    ) -> None:
        super().__init__(ctx, **kw)
        for opt, val, ok in (
            ("variant", variant, VARIANTS),
            ("norm", norm, ("l2", "l1")),
            ("granularity", granularity, ("model", "layer")),
            ("include", include, ("learnable", "weights")),
        ):
            if val not in ok:
                raise ValueError(f"aggregator.{opt}='{val}' is not one of {', '.join(ok)}")
        if not eps > 0:
            raise ValueError(f"aggregator.eps={eps} must be > 0")
        self.variant, self.norm, self.granularity, self.include = variant, norm, granularity, include
        self.eps = float(eps)

    # -- pieces ---------------------------------------------------------------
    def in_distance(self, name: str, ref: np.ndarray) -> bool:
        if not is_learnable(name, ref):
            return False
        return self.include == "learnable" or ref.ndim >= 2

    def _partial(self, diff: np.ndarray) -> float:
        """Sum of |x|^q (q = 2 or 1): adds up across tensors."""
        return float(np.sum(diff * diff)) if self.norm == "l2" else float(np.sum(np.abs(diff)))

    def _finish(self, acc: np.ndarray) -> np.ndarray:
        return np.sqrt(acc) if self.norm == "l2" else acc

    def partial_distances(self, updates: list[ClientUpdate], x: Params) -> dict[str, np.ndarray]:
        """Per included tensor: Σ|θ_k − θ̄|^q for each client k (θ̄ the unweighted
        mean). Chunked: per chunk the mean is formed in cache, then each client's
        distance to it -- two passes over the updates, float64 throughout."""
        out: dict[str, np.ndarray] = {}
        m = len(updates)
        for name, ref in x.items():
            if not self.in_distance(name, ref):
                continue
            flat = [np.asarray(u.params[name]).reshape(-1) for u in updates]
            part = np.zeros(m, dtype=np.float64)
            for sl, (mu, tt) in chunked(flat[0].size, 2):
                mu.fill(0.0)
                for a in flat:
                    np.add(mu, a[sl], out=mu)
                mu /= m
                for k, a in enumerate(flat):
                    np.subtract(a[sl], mu, out=tt)
                    # square/abs in place + sum: no BLAS call (np.dot spins BLAS threads)
                    if self.norm == "l2":
                        part[k] += float(np.multiply(tt, tt, out=tt).sum())
                    else:
                        part[k] += float(np.abs(tt, out=tt).sum())
            out[name] = part
        return out

    def coefficients(self, d: np.ndarray, updates: list[ClientUpdate]) -> np.ndarray:
        d = np.maximum(d, self.eps)
        c = np.ones(len(updates))
        if self.variant in ("ida", "ida_intrac", "ida_fedavg"):
            c = c / d
        if self.variant in ("intrac", "ida_intrac"):
            acc = []
            for u in updates:
                if u.train_accuracy is None or not np.isfinite(u.train_accuracy):
                    raise ValueError(
                        f"client {u.client_id}: IDA variant '{self.variant}' needs train_accuracy"
                    )
                acc.append(max(float(u.train_accuracy), self.eps))
            c = c / np.array(acc)
        if self.variant == "ida_fedavg":
            c = c * np.array([u.num_examples for u in updates], dtype=np.float64)
        s = c.sum()
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"IDA: degenerate weights {c.tolist()} (all sample counts zero?)")
        return c / s

    def aggregate(self, global_params, updates, info):
        if not updates:
            return global_params, {"weights": []}
        updates = sorted_updates(updates)
        if len(updates) == 1:
            out = {k: np.array(v, copy=True) for k, v in updates[0].params.items()}
            return out, {**weights_metrics(updates, np.ones(1)), "ida_distances": [0.0]}
        parts = self.partial_distances(updates, global_params)
        total = np.zeros(len(updates))
        for v in parts.values():
            total += v
        d_model = self._finish(total)
        alpha_model = self.coefficients(d_model, updates)
        per_tensor: dict[str, np.ndarray] = {}
        if self.granularity == "layer":
            per_tensor = {k: self.coefficients(self._finish(v), updates) for k, v in parts.items()}
        out = {}
        top = int(np.argmax(alpha_model))
        for name, ref in global_params.items():
            if not is_float(ref):
                out[name] = np.array(updates[top].params[name], copy=True)
                continue
            a = per_tensor.get(name, alpha_model)
            out[name] = weighted_sum([u.params[name] for u in updates], a, out_dtype=ref.dtype)
        shown = np.mean(list(per_tensor.values()), axis=0) if per_tensor else alpha_model
        metrics = weights_metrics(updates, shown)
        metrics["ida_distances"] = [float(x) for x in d_model]
        return out, metrics
