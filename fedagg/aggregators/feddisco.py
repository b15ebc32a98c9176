"""FedDisco (Ye et al., ICML 2023, arXiv 2305.19229); docs/algorithms.md.

Per round, over the participants S_t:
    n_k = N_k / Σ_{j∈S_t} N_j
    d_k = M(D_k, T)          D_k = label_hist_k / N_k, T = target distribution
    w̃_k = n_k − a·d_k + b
    p_k = ReLU(w̃_k) / Σ_j ReLU(w̃_j)
    x̄   = Σ_k p_k θ_k        (every float tensor; integer tensors from the
                               client with the largest p_k, as in base.py)
    x_{t+1} = server optimiser step from x_t towards x̄ (:mod:`.server_opt`)
so ``server_lr=1, server_momentum=0`` is plain "FedAvg+FedDisco" and a
momentum β > 0 is "FedAvgM+FedDisco" in the official code's form
(``server_momentum_form='ema'``, the default here):
    v ← β v + (1−β)(x_t − x̄),  x_{t+1} = x_t − η v   (official: η = 1)
``server_momentum_form='heavy_ball'`` is fedavg's form v ← β v + (x_t − x̄),
x_{t+1} = x_t − η v; the two agree when η_heavy_ball = (1−β)·η_ema.
``server_opt=adam|yogi|adagrad`` composes FedOpt with the FedDisco weights.

Metrics ``metric``: ``kl`` (default, as in every shipped script): KL(D_k‖T)
with 0·log 0 = 0, then normalised across the participants so Σ d_k = 1 (all
zero if every KL is 0); ``l2`` = ‖D_k − T‖₂; ``l1`` = ‖D_k − T‖₁;
``cosine`` = 1 − cos(D_k, T). ``target: null`` is the uniform T_c = 1/C;
a list of class proportions is normalised to sum 1.

Fallback (the official code leaves it undefined): if every w̃_k ≤ 0 the
weights are the plain size weights n_k, and the metrics say
``disco_fallback=1`` (0 otherwise).

FedProx composes on the client side: ``proximal_mu`` is sent to clients via
:meth:`client_config` as ``{"proximal_mu": mu}``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    Metrics,
    RoundInfo,
    sorted_updates,
    weighted_average,
    weights_metrics,
)
from .registry import register
from .server_opt import apply_server_step, server_optimizer

METRICS = ("kl", "l2", "l1", "cosine")


def label_distribution(u: ClientUpdate) -> np.ndarray:
    """The client's label distribution D_k (``apply`` has checked that the
    histogram is there, has C non-negative entries and a positive sum)."""
    h = np.asarray(u.label_hist, dtype=np.float64)
    return h / h.sum()


def discrepancies(D: np.ndarray, T: np.ndarray, metric: str) -> np.ndarray:
    """d_k for the rows of D (participants × classes) against the target T."""
    if metric == "kl":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(D > 0, D * np.log(D / T), 0.0)
        kl = terms.sum(axis=1)
        s = kl.sum()
        return kl / s if s > 0 else np.zeros_like(kl)
    if metric == "l2":
        return np.linalg.norm(D - T, axis=1)
    if metric == "l1":
        return np.abs(D - T).sum(axis=1)
    if metric == "cosine":
        cos = (D @ T) / (np.linalg.norm(D, axis=1) * np.linalg.norm(T))
        return 1.0 - cos
    raise ValueError(f"aggregator.metric='{metric}' is not one of {', '.join(METRICS)}")


def target_distribution(target: Sequence[float] | None, C: int, metric: str, key: str) -> np.ndarray:
    """The target T: uniform for None, else ``target`` normalised to sum 1 (``key`` names it in errors)."""
    if target is None:
        return np.full(C, 1.0 / C)
    T = np.asarray(list(target), dtype=np.float64)
    if T.shape != (C,):
        raise ValueError(f"{key} has {T.size} entries, expected {C} classes")
    if not np.all(np.isfinite(T)) or np.any(T < 0) or T.sum() <= 0:
        raise ValueError(f"{key} must be non-negative with a positive sum")
    T = T / T.sum()
    if metric == "kl" and np.any(T == 0):
        raise ValueError(f"{key} has a zero class: KL to it is infinite")
    return T


def disco_adjusted(updates: list[ClientUpdate], base: np.ndarray, a: float, b: float, metric: str,
                   T: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """FedDisco's adjustment of a rule's weights ``base`` (the official code's
    ``disco_weight_adjusting(old_weight, d, a, b)``): p = ReLU(base − a·d + b),
    normalised; ``base`` itself when every entry clips (``fell_back``).
    Returns (p, d, fell_back), in the order of ``updates``."""
    D = np.stack([label_distribution(u) for u in updates])
    d = discrepancies(D, T, metric)
    w = np.maximum(base - a * d + b, 0.0)
    if w.sum() <= 0:
        return base, d, True
    return w / w.sum(), d, False


class DiscoComposable(Aggregator):
    """A base for rules that weight clients by p_k and can take FedDisco's
    discrepancy-aware weights instead (``disco=true``), as the official FedDisco
    code composes them with FedAvg, FedProx, FedNova, SCAFFOLD, FedDyn, MOON
    (``args.disco`` in ``algorithms/*.py`` of MediaBrain-SJTU/FedDisco @ f3ea299).

    A rule calls :meth:`disco_adjust` on its own weights (the size fractions
    n_k); with ``disco=false`` they come back unchanged and no metric is added,
    so the rule's numbers are what they were. ``disco_a``, ``disco_b``,
    ``disco_metric``, ``disco_target`` are FedDisco's a, b, metric, target (the
    official defaults a=0.5, b=0.1, KL to the uniform distribution). With
    ``disco=true`` every reply must carry its label histogram."""

    def __init__(
        self,
        ctx: AggregatorContext,
        disco: bool = False,
        disco_a: float = 0.5,
        disco_b: float = 0.1,
        disco_metric: str = "kl",
        disco_target: Sequence[float] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        self.disco = bool(disco)
        self.disco_a, self.disco_b, self.disco_metric = float(disco_a), float(disco_b), disco_metric
        self.disco_T: np.ndarray | None = None
        if not self.disco:
            return
        if disco_metric not in METRICS:
            raise ValueError(f"aggregator.disco_metric='{disco_metric}' is not one of {', '.join(METRICS)}")
        C = int(ctx.num_classes)
        if C < 1:
            raise ValueError(
                f"{self.name} with disco=true needs the number of classes: pass num_classes= to strategy_for, "
                "or let clients answer the strategy's id query with their 'label-hist'"
            )
        self.disco_T = target_distribution(disco_target, C, disco_metric, "aggregator.disco_target")
        self.needs_label_hist = True  # type: ignore[misc]  # d_k needs each participant's histogram

    weighted = True  # the rule's own weights: size fractions n_k; False: the plain mean (SCAFFOLD's, FedDyn's papers)

    def weights(self, updates: list[ClientUpdate], info: RoundInfo) -> np.ndarray:
        """The rule's own weights without ``disco``: the size fractions n_k, or with
        ``weighted`` false the plain mean 1/|S|."""
        if not self.weighted:
            return np.full(len(updates), 1.0 / len(updates))
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        return n / n.sum()

    def composed_weights(self, updates: list[ClientUpdate], info: RoundInfo) -> tuple[np.ndarray, Metrics]:
        """(weights, extra metrics): :meth:`weights` without ``disco``; with it, FedDisco's
        p_k from the size fractions n_k, as FedDisco's official code composes every base rule."""
        if not self.disco:
            return self.weights(updates, info), {}
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        return self.disco_adjust(updates, n / n.sum())

    def disco_adjust(self, updates: list[ClientUpdate], base: np.ndarray) -> tuple[np.ndarray, Metrics]:
        """(weights, extra metrics): ``base`` unchanged without ``disco``; else
        FedDisco's p_k (:func:`disco_adjusted`) with ``discrepancy`` and
        ``disco_fallback`` metrics, as the ``feddisco`` rule reports them."""
        if not self.disco or not updates:
            return base, {}
        assert self.disco_T is not None
        p, d, fell_back = disco_adjusted(updates, base, self.disco_a, self.disco_b, self.disco_metric, self.disco_T)
        return p, {"discrepancy": [float(x) for x in d], "disco_fallback": int(fell_back)}


@register("feddisco")
class FedDisco(Aggregator):
    needs_label_hist = True  # d_k needs each participant's label distribution

    def __init__(
        self,
        ctx: AggregatorContext,
        a: float = 0.5,
        b: float = 0.1,
        metric: str = "kl",
        target: Sequence[float] | None = None,
        proximal_mu: float = 0.0,
        server_opt: str = "sgd",
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_momentum_form: str = "ema",
        server_beta_1: float = 0.9,
        server_beta_2: float = 0.99,
        server_tau: float = 1e-3,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        if metric not in METRICS:
            raise ValueError(f"aggregator.metric='{metric}' is not one of {', '.join(METRICS)}")
        if proximal_mu < 0:
            raise ValueError(f"aggregator.proximal_mu={proximal_mu} must be >= 0")
        C = int(ctx.num_classes)
        if C < 1:
            raise ValueError(
                "feddisco needs the number of classes: pass num_classes= to strategy_for, or let clients "
                "answer the strategy's id query with their 'label-hist'"
            )
        T = target_distribution(target, C, metric, "aggregator.target")
        self.a, self.b, self.metric, self.target = float(a), float(b), metric, T
        self.proximal_mu = float(proximal_mu)
        self.opt = server_optimizer(
            server_opt, server_lr, server_momentum, server_momentum_form,
            server_beta_1, server_beta_2, server_tau,
        )

    def client_config(self) -> dict[str, Any]:
        # only a FedProx term the aggregator itself sets: an unset one (0) must not
        # override the client's own train.proximal_mu
        return {"proximal_mu": self.proximal_mu} if self.proximal_mu > 0 else {}

    def weights(self, updates: list[ClientUpdate]) -> tuple[np.ndarray, np.ndarray, bool]:
        """(p_k, d_k, fell_back) for the participants, in the given order."""
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        n = n / n.sum()
        return disco_adjusted(updates, n, self.a, self.b, self.metric, self.target)

    def aggregate(self, global_params, updates, info: RoundInfo):
        if not updates:
            return global_params, {"weights": [], "disco_fallback": 0}
        updates = sorted_updates(updates)
        p, d, fell_back = self.weights(updates)
        avg = weighted_average(updates, p, global_params)
        out = apply_server_step(self.opt, global_params, avg, info.round)
        metrics = weights_metrics(updates, p)
        metrics["discrepancy"] = [float(x) for x in d]
        metrics["disco_fallback"] = int(fell_back)
        return out, metrics

    def state_dict(self):
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state.get("opt", {}))
