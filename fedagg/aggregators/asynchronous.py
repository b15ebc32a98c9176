"""The server updates of the asynchronous modes (``server.mode``; the schedule is :mod:`fedagg.env.events`).

Each applied client update k carries its trained model θ_k, the model x_{v_k} it was sent (version v_k) and its
staleness τ_k = v - 1 - v_k when it is applied by the update that creates version v (fresh: 0). The staleness
function s (``server.staleness``, with a = ``server.staleness_a``, b = ``server.staleness_b``)::

    polynomial  s(τ) = (τ + 1)^(-a)                      (FedAsync's polynomial; a = 0.5: FedBuff's 1/√(1+τ))
    hinge       s(τ) = 1 if τ <= b else 1 / (a (τ - b) + 1)   (FedAsync's hinge)
    constant    s(τ) = 1

``fedasync`` (Xie et al. 2019, arXiv 1903.03934, Algorithm 1 with its adaptive α_t)::

    α_t = α · s(τ)          x_v = (1 - α_t) x_{v-1} + α_t θ_k          (α = ``server.alpha``)

on every float tensor (BatchNorm statistics too: a convex combination); integer tensors take θ_k's. (The paper
writes s(t - τ) with t - τ = 1 for a fresh update; here τ counts updates since the download, fresh = 0.)

``fedbuff`` (Nguyen et al., AISTATS 2022, arXiv 2106.06639, Algorithm 1): with the buffer's K updates, the
rule's weights w_k on the buffer (FedAvg: n_k / Σ_buffer n; FedDisco: its discrepancy-aware p_k computed over
the buffer; FedAU: ω_n / N, its participation-interval estimate with the intervals counted in server updates, a
client participating in the updates that apply it) and s(τ_k)::

    Δ = Σ_k w_k s(τ_k) (θ_k - x_{v_k})         x_v = ServerOptimizer.step(x_{v-1}, Δ)

(the rule's ``server_opt``; sgd with η = 1 is x_{v-1} + Δ).

``fedfix`` (Fraboni et al., JMLR 2023, arXiv 2206.10189, FedFix; the official code
Accenture/Labs-Federated-Learning, FL/server.py at 1c896f0, ``agg_weights = ceil(tau_i / delta_t) * P``):
the clients that arrived in the window, with p_i = n_i / Σ_{all clients} n_j and T_k the job's simulated
duration (dispatch to arrival)::

    d_k = p_i ⌈T_k / Δ⌉         Δx = Σ_k d_k (θ_k - x_{v_k})         x_v = ServerOptimizer.step(x_{v-1}, Δx)

A slow client arrives in fewer windows, and ⌈T_k/Δ⌉ scales its update up by the number of windows one of its
jobs spans, so every client counts with its data share p_i in expectation (the paper's unbiasedness
condition); no staleness weight. A window without arrivals leaves the model unchanged.

In fedbuff and fedfix the optimiser moves the learnable tensors; the other tensors (BatchNorm statistics,
integer counters) are the weight-normalised average of the applied models' (integers: the top weight's), as
FedAvg does. All arithmetic is float64, cast back to each tensor's dtype.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import ClientUpdate, Params, RoundInfo, is_float, is_learnable, weighted_average
from .fedau import FedAU
from .fedavg import FedAvg
from .feddisco import FedDisco

AsyncRule = FedAvg | FedDisco | FedAU  # the rules with weights on a set of updates and a server optimiser

STALENESS = ("polynomial", "hinge", "constant")


def buffer_weights(rule: AsyncRule, updates: list[ClientUpdate], info: RoundInfo) -> np.ndarray:
    """The rule's own weights on the buffer's updates (FedAvg, FedDisco: summing to 1; FedAU: ω_n / N)."""
    if isinstance(rule, FedDisco):
        return rule.weights(updates)[0]
    if isinstance(rule, FedAU):
        return rule.buffer_coefficients(updates, info)
    return rule.weights(updates, info)


def staleness_weight(kind: str, tau: int, a: float, b: float) -> float:
    """s(τ) of ``server.staleness`` (module docstring)."""
    if tau < 0:
        raise ValueError(f"staleness {tau} < 0")
    if kind == "polynomial":
        return float((tau + 1.0) ** (-a))
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    if kind == "constant":
        return 1.0
    raise ValueError(f"server.staleness='{kind}' is not one of {', '.join(STALENESS)}")


@dataclass(frozen=True)
class Applied:
    """One client update as a server update applies it."""

    update: ClientUpdate
    sent: Params  # the model it was sent
    staleness: int
    duration_s: float  # dispatch to arrival, simulated seconds


class AsyncServerStep:
    """One server update of ``mode`` on the applied updates (the rule's weights and server optimiser)."""

    def __init__(self, mode: str, rule: AsyncRule, *, alpha: float = 0.6, staleness: str = "polynomial",
                 staleness_a: float = 0.5, staleness_b: float = 4.0, window_s: float | None = None,
                 data_share: np.ndarray | None = None) -> None:
        self.mode, self.rule, self.alpha = mode, rule, float(alpha)
        self.staleness, self.a, self.b = staleness, float(staleness_a), float(staleness_b)
        self.window_s = window_s
        self.data_share = data_share  # fedfix: p_i of every client

    def weights(self, items: Sequence[Applied], info: RoundInfo) -> np.ndarray:
        """Each applied update's weight: α_t (fedasync), w_k s(τ_k) (fedbuff), d_k (fedfix)."""
        if not items:
            return np.zeros(0)
        s = np.array([staleness_weight(self.staleness, it.staleness, self.a, self.b) for it in items])
        if self.mode == "fedasync":
            return self.alpha * s
        if self.mode == "fedbuff":
            return buffer_weights(self.rule, [it.update for it in items], info) * s
        assert self.window_s is not None and self.data_share is not None
        return np.array([self.data_share[it.update.client_id] * max(1, math.ceil(it.duration_s / self.window_s - 1e-9))
                         for it in items])

    def apply(self, x: Params, items: Sequence[Applied], info: RoundInfo) -> tuple[Params, np.ndarray]:
        """x_v from x_{v-1} = ``x`` and the updates in the order applied; returns it and the weights."""
        w = self.weights(items, info)
        if not items:
            if isinstance(self.rule, FedAU):
                self.rule.buffer_coefficients([], info)
                self.rule.observe_buffer(info)
            return x, w
        if self.mode == "fedasync":
            (it,) = items
            a = float(w[0])
            out: Params = {}
            for k, v in x.items():
                theta = it.update.params[k]
                if is_float(v):
                    mixed = (1.0 - a) * v.astype(np.float64) + a * theta.astype(np.float64)
                    out[k] = mixed.astype(v.dtype)
                else:
                    out[k] = np.array(theta, copy=True)
            return out, w
        norm = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        out = weighted_average([it.update for it in items], norm, x)  # non-learnable tensors: as FedAvg
        delta = {}
        for k, v in x.items():
            if not is_learnable(k, v):
                continue
            d = np.zeros(v.shape, np.float64)
            for wk, it in zip(w, items):
                d += wk * (it.update.params[k].astype(np.float64) - it.sent[k].astype(np.float64))
            delta[k] = d
        out.update(self.rule.opt.step(x, delta, info.round))
        if isinstance(self.rule, FedAU):
            self.rule.observe_buffer(info)
        return out, w
