"""FedAU (Wang & Ji, ICLR 2024, arXiv 2306.03401) and the baselines shipped
with its official code (docs/algorithms.md): ``avg_participating``,
``avg_all``, ``mifa``, ``fedvarp`` and the oracle ``known_prob``.

All of them move the global model by a combination of updates
Δ_n = θ_n − x_t:

    x_{t+1} = x_t + η · direction_t     (server_opt=sgd, the default; FedAdam,
                                        FedYogi, FedAdagrad take Δ = direction_t)

==================  =========================================================
rule                direction_t
==================  =========================================================
fedau               (1/N) Σ_{n∈S_t} ω_n^t Δ_n, ω from the interval estimator
known_prob          (1/N) Σ_{n∈S_t} Δ_n / p_n   (oracle: reads the true p_n)
avg_participating   (1/|S_t|) Σ_{n∈S_t} Δ_n     (0 when S_t = ∅)
avg_all             (1/N) Σ_{n∈S_t} Δ_n
mifa                (1/N) Σ_{n=1..N} y_n, y_n = latest Δ_n (0 before any)
fedvarp             (1/|S_t|) Σ_{n∈S_t} (Δ_n − y_n) + ȳ_old  (0 when S_t = ∅)
==================  =========================================================

N = ``info.num_clients``; S_t = ``info.replied`` (``info.participation()``).
Weights are *not* normalised: only in expectation Σ ω q ≈ N.

FedAU's estimator (equivalent to the official loop): per client M_n
(completed intervals), S_n (rounds in the current interval), Ω_n (running
mean). The weight used in round t is Ω_n if M_n ≥ 1 else 1 -- it depends on
rounds < t only. After the round, for every n: S_n += 1; if q_n = 1 or
S_n = K: Ω_n ← mean including S_n, M_n += 1, S_n ← 0. So the interval closed
by round t is first used in round t+1, a first participation at 0-based round
t0 records t0+1, and a gap of m·K + r missed rounds then a participation
records m intervals of K, then r+1. ``K=None`` means K = ∞ (the official
default 100000 is the same thing for runs shorter than 100000 rounds).

Which tensors (a choice; the official models have no BN and the code applies
the same ω to the whole flattened state_dict; not covered by the paper):

* learnable float tensors (weights, biases, BN affine) follow the rule above;
* BN running statistics are set to the plain mean of the participants'
  values (a convex combination: an un-normalised weighted sum with η ≠ 1
  could make ``running_var`` negative); unchanged when nobody replied;
* integer tensors (``num_batches_tracked``) are taken from the participant
  with the largest weight, as :func:`weighted_average` does; unchanged when
  nobody replied.

A round the host skipped (``info.round`` jumps by more than 1) is counted as
a round in which nobody participated, so FedAU's intervals stay in rounds.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    Params,
    RoundInfo,
    is_float,
    is_learnable,
    sorted_updates,
    weighted_sum,
    weights_metrics,
)
from .registry import register
from .server_opt import server_optimizer


# -- FedAU's participation-interval estimator ---------------------------------
class IntervalEstimator:
    """Vectorised over clients; O(1) scalars per client."""

    def __init__(self, num_clients: int, K: float | None = None) -> None:
        if K is None:
            K = math.inf
        if not (K == math.inf or (float(K).is_integer() and K >= 1)):
            raise ValueError(f"aggregator.K={K} must be a positive integer or null (= ∞)")
        self.K = float(K)
        self.M = np.zeros(num_clients, dtype=np.int64)  # completed intervals
        self.S = np.zeros(num_clients, dtype=np.int64)  # rounds in the open interval
        self.omega = np.zeros(num_clients, dtype=np.float64)  # mean of completed intervals

    def weights(self) -> np.ndarray:
        """ω_n used in the current round: Ω_n if M_n ≥ 1, else 1."""
        return np.where(self.M >= 1, self.omega, 1.0)

    def update(self, q: np.ndarray) -> None:
        """After a round with participation flags q (all clients)."""
        q = np.asarray(q, dtype=bool)
        self.S += 1
        close = q | (self.S >= self.K)
        m = self.M[close]
        self.omega[close] = (m * self.omega[close] + self.S[close]) / (m + 1)
        self.M[close] += 1
        self.S[close] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"M": self.M.copy(), "S": self.S.copy(), "omega": self.omega.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.M = np.array(state["M"], dtype=np.int64)
        self.S = np.array(state["S"], dtype=np.int64)
        self.omega = np.array(state["omega"], dtype=np.float64)


# -- the common update-based rule --------------------------------------------
class _DeltaRule(Aggregator):
    """x_{t+1} = x_t + η · direction on learnable tensors (see module doc)."""

    def __init__(
        self,
        ctx: AggregatorContext,
        server_opt: str = "sgd",
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_momentum_form: str = "heavy_ball",
        server_beta_1: float = 0.9,
        server_beta_2: float = 0.99,
        server_tau: float = 1e-3,
        **kw: Any,
    ) -> None:
        super().__init__(ctx, **kw)
        # x_{t+1} = optimiser step with Δ = direction (sgd, η, no momentum: x + η·direction)
        self.opt = server_optimizer(
            server_opt, server_lr, server_momentum, server_momentum_form,
            server_beta_1, server_beta_2, server_tau,
        )
        self.num_clients = int(ctx.num_clients)
        self.last_round = 0
        self.setup()

    def setup(self) -> None:
        """Rule-specific state and checks (after the common fields are set)."""

    # subclasses: coefficients c_k (for metrics, integer tensors) and the
    # direction for the learnable tensors; `observe` updates state afterwards.
    def coefficients(self, updates: list[ClientUpdate], info: RoundInfo) -> np.ndarray:
        raise NotImplementedError

    def direction(
        self, x: Params, updates: list[ClientUpdate], c: np.ndarray, info: RoundInfo
    ) -> dict[str, np.ndarray]:
        """Default: Σ_k c_k Δ_k (float64) on every learnable tensor, one
        chunked pass over the updates (bitwise the naive float64 loop)."""
        out: dict[str, np.ndarray] = {}
        for name, ref in x.items():
            if not is_learnable(name, ref):
                continue
            if updates:
                out[name] = weighted_sum([u.params[name] for u in updates], c, center=ref)
            else:
                out[name] = np.zeros(ref.shape, dtype=np.float64)
        return out

    def observe(self, q: np.ndarray) -> None:
        return None

    def extra_metrics(self, updates: list[ClientUpdate], c: np.ndarray) -> dict[str, Any]:
        return {}

    def _skip_to(self, rnd: int) -> None:
        if rnd <= self.last_round:
            raise ValueError(
                f"aggregator '{self.name}': round {rnd} after round {self.last_round}"
            )
        for _ in range(rnd - self.last_round - 1):  # rounds the host skipped
            self.observe(np.zeros(self.num_clients, dtype=bool))
        self.last_round = rnd

    def aggregate(self, global_params, updates, info):
        updates = sorted_updates(updates)
        self._skip_to(info.round)
        c = np.asarray(self.coefficients(updates, info), dtype=np.float64)
        d = self.direction(global_params, updates, c, info)
        out: Params = self.opt.step(global_params, d, info.round)
        for name, ref in global_params.items():
            if name in d:
                continue
            elif not updates:
                out[name] = ref.copy()
            elif is_float(ref):  # BN running statistics: plain participant mean
                out[name] = np.mean(
                    [u.params[name].astype(np.float64) for u in updates], axis=0
                ).astype(ref.dtype)
            else:  # integer tensors: from the participant with the largest weight
                out[name] = np.array(updates[int(np.argmax(c))].params[name], copy=True)
        self.observe(info.participation())
        metrics = weights_metrics(updates, c)
        metrics.update(self.extra_metrics(updates, c))
        return out, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"last_round": self.last_round, "opt": self.opt.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_round = int(state.get("last_round", 0))
        self.opt.load_state_dict(state.get("opt", {}))


@register("fedau")
class FedAU(_DeltaRule):
    """FedAU: ω_n = running mean of participation intervals (cutoff K).

    Options: ``K`` (None = ∞; the README also runs K=50), the server optimiser
    (default sgd, η = 1; see :mod:`.server_opt`).
    Metrics: ``weights`` = ω_n/N (the coefficient on Δ_n before η),
    ``omega`` = ω_n, ``omega_sum_over_N`` = Σ_{S_t} ω_n / N.
    """

    def __init__(
        self,
        ctx: AggregatorContext,
        K: int | None = None,
        server_opt: str = "sgd",
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_momentum_form: str = "heavy_ball",
        server_beta_1: float = 0.9,
        server_beta_2: float = 0.99,
        server_tau: float = 1e-3,
        **kw: Any,
    ) -> None:
        self.estimator = IntervalEstimator(int(ctx.num_clients), K)
        super().__init__(
            ctx, server_opt, server_lr, server_momentum, server_momentum_form,
            server_beta_1, server_beta_2, server_tau, **kw,
        )

    def coefficients(self, updates, info):
        w = self.estimator.weights()
        return np.array([w[u.client_id] for u in updates]) / info.num_clients

    def observe(self, q):
        self.estimator.update(q)

    def buffer_coefficients(self, updates: list[ClientUpdate], info: RoundInfo) -> np.ndarray:
        """``server.mode=fedbuff``: ω_n / N on the buffer applied by server update ``info.round``, the
        intervals counted in server updates (a client "participates" in the updates that apply it); call
        :meth:`observe_buffer` after the step."""
        self._skip_to(info.round)
        return np.asarray(self.coefficients(updates, info), dtype=np.float64)

    def observe_buffer(self, info: RoundInfo) -> None:
        self.observe(info.participation())

    def extra_metrics(self, updates, c):
        return {
            "omega": [float(x * self.num_clients) for x in c],
            "omega_sum_over_N": float(np.sum(c)),
        }

    def state_dict(self):
        return {**super().state_dict(), "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.estimator.load_state_dict(state["estimator"])


@register("known_prob")
class KnownProb(_DeltaRule):
    """Oracle baseline: ω_n = 1/p_n with the simulation's true p_n, divisor N.
    The only aggregator that reads ``ctx.oracle_participation_probs``
    (``needs_oracle_probs``; every other rule's context has None there)."""

    needs_oracle_probs = True

    def setup(self) -> None:
        p = self.ctx.oracle_participation_probs
        if p is None:
            raise ValueError(
                "aggregator 'known_prob' is the oracle baseline and needs "
                "ctx.oracle_participation_probs (the true participation probabilities); "
                "the host did not provide them"
            )
        p = np.asarray(p, dtype=np.float64)
        if p.shape != (self.num_clients,):
            raise ValueError(
                f"oracle_participation_probs has shape {p.shape}, expected ({self.num_clients},)"
            )
        if not np.all((p > 0) & (p <= 1)):
            raise ValueError("oracle_participation_probs must lie in (0, 1]")
        self.p = p

    def coefficients(self, updates, info):
        return np.array([1.0 / self.p[u.client_id] for u in updates]) / info.num_clients


@register("avg_participating")
class AverageParticipating(_DeltaRule):
    """ω = 1, divisor |S_t| (weights sum to 1); no move when S_t = ∅."""

    def coefficients(self, updates, info):
        return np.full(len(updates), 1.0 / max(len(updates), 1))


@register("avg_all")
class AverageAll(_DeltaRule):
    """ω = 1, divisor N."""

    def coefficients(self, updates, info):
        return np.full(len(updates), 1.0 / info.num_clients)


class _StoredUpdates(_DeltaRule):
    """Keeps the latest Δ_n of every client (learnable tensors, in the model's
    dtype; 0 before the first participation) and their running sum (float64)."""

    def setup(self) -> None:
        self.stored: dict[int, dict[str, np.ndarray]] = {}
        self.total: dict[str, np.ndarray] | None = None

    def _deltas(self, x: Params, u: ClientUpdate) -> dict[str, np.ndarray]:
        return {
            k: (u.params[k].astype(np.float64) - ref.astype(np.float64))
            for k, ref in x.items()
            if is_learnable(k, ref)
        }

    def _store(self, x: Params, updates: list[ClientUpdate], deltas: list[dict]) -> None:
        if self.total is None:
            self.total = {
                k: np.zeros(ref.shape, np.float64) for k, ref in x.items() if is_learnable(k, ref)
            }
        for u, d in zip(updates, deltas):
            new = {k: v.astype(x[k].dtype) for k, v in d.items()}
            old = self.stored.get(u.client_id)
            for k in self.total:
                self.total[k] += new[k].astype(np.float64)
                if old is not None:
                    self.total[k] -= old[k].astype(np.float64)
            self.stored[u.client_id] = new

    def state_dict(self):
        return {
            **super().state_dict(),
            "stored": {int(c): {k: v.copy() for k, v in d.items()} for c, d in self.stored.items()},
            "total": None if self.total is None else {k: v.copy() for k, v in self.total.items()},
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.stored = {
            int(c): {k: np.array(v) for k, v in d.items()} for c, d in state["stored"].items()
        }
        t = state["total"]
        self.total = None if t is None else {k: np.array(v, dtype=np.float64) for k, v in t.items()}


@register("mifa")
class MIFA(_StoredUpdates):
    """direction = mean over all N clients of the stored latest updates
    (this round's participants stored first). Moves even when S_t = ∅."""

    def coefficients(self, updates, info):
        return np.full(len(updates), 1.0 / info.num_clients)

    def direction(self, x, updates, c, info):
        self._store(x, updates, [self._deltas(x, u) for u in updates])
        if self.total is None:
            return {k: np.zeros(ref.shape) for k, ref in x.items() if is_learnable(k, ref)}
        return {k: v / info.num_clients for k, v in self.total.items()}


@register("fedvarp")
class FedVarp(_StoredUpdates):
    """direction = (1/|S_t|) Σ_{S_t}(Δ_n − y_n) + ȳ_old, then y_n ← Δ_n.
    As in the official loop, an empty round does not move the model."""

    def coefficients(self, updates, info):
        return np.full(len(updates), 1.0 / max(len(updates), 1))

    def direction(self, x, updates, c, info):
        learn = [k for k, ref in x.items() if is_learnable(k, ref)]
        if not updates:
            return {k: np.zeros(x[k].shape) for k in learn}
        n = info.num_clients
        ybar_old = {
            k: (self.total[k] / n if self.total is not None else np.zeros(x[k].shape)) for k in learn
        }
        deltas = [self._deltas(x, u) for u in updates]
        out = {}
        for k in learn:
            acc = np.zeros(x[k].shape, np.float64)
            for u, d in zip(updates, deltas):
                old = self.stored.get(u.client_id)
                acc += d[k] - (old[k].astype(np.float64) if old is not None else 0.0)
            out[k] = acc / len(updates) + ybar_old[k]
        self._store(x, updates, deltas)
        return out
