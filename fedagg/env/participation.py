"""Participation patterns: which of the N clients are available in a round.

A pattern is built from ``(num_clients, seed, label_dists, **options)`` and
answers ``available(round) -> bool[N]`` for rounds 1, 2, 3, ... in order.
Its state (e.g. Markov chains) is in ``state_dict()`` so a resume continues
exactly. ``probs`` is the true per-client probability (simulation truth).

=========  ==========================================================================================
name       pattern
=========  ==========================================================================================
full       everyone, every round
uniform    ``round(fraction·N)`` (≥ 1) clients sampled uniformly without replacement per round
bernoulli  q_n^t ~ Bernoulli(p_n), i.i.d. over rounds (FedAU, docs/algorithms.md §3)
markov     two-state chain per client, stationary p_n (FedAU ``markov-a``)
cyclic     square wave: A_n active rounds then B_n inactive ones, random phase (FedAU ``cyclic-L``)
trace      availability read from a CSV of ``round,client`` rows
=========  ==========================================================================================

p_n for bernoulli / markov / cyclic (FedAU ``data_participation_each_node``):
``p_n = max(p_min, C·p_bar·⟨D_n, m⟩)`` with one m ~ Dir(alpha·1_C) from the stream
``(seed, "participation-m")`` and D_n = ``label_dists[n]`` (rows sum to 1, passed
by the host). ``probs: [..]`` (length N) or ``homogeneous_p: p`` override it.
Unlike FedAU (whose numpy Bernoulli would fail on p > 1) computed p_n are capped at 1.

Randomness: per-client streams. Per-round draws of client n come from
``rng(seed, "participation", n, block)`` where block = (round−1) // 1024 (each
stream yields the 1024 rounds of its block), so every draw is a pure function
of (seed, round, client) and no generator state has to be checkpointed; a
client's initial state (Markov) or phase (cyclic) comes from
``rng(seed, "participation", n)``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from ..registry import Registry
from ..seeding import rng as named_rng

_PATTERNS: Registry[Callable[..., "Participation"]] = Registry("participation.name")
_BLOCK = 1024


register_participation = _PATTERNS.register
available = _PATTERNS.available


def build_participation(
    name: str, num_clients: int, seed: int, label_dists: npt.ArrayLike | None = None, **options: Any
) -> "Participation":
    cls = _PATTERNS.get(name)
    if int(num_clients) < 1:
        raise ValueError(f"num_clients={num_clients} must be >= 1")
    options = {k: v for k, v in options.items() if k != "name"}
    try:
        return cls(num_clients, seed, label_dists, **options)
    except TypeError as e:
        raise ValueError(f"participation '{name}': bad option ({e}); check the participation.* keys") from e


def fedau_probs(
    label_dists: np.ndarray, seed: int, p_bar: float = 0.1, p_min: float = 0.02, alpha: float = 0.1
) -> np.ndarray:
    """FedAU's heterogeneous, data-correlated probabilities (docs/algorithms.md §3)."""
    p_bar, p_min, alpha = float(p_bar), float(p_min), float(alpha)
    if not 0.0 < p_bar <= 1.0:
        raise ValueError(f"participation.p_bar={p_bar} must be in (0, 1] (mean participation probability)")
    if not 0.0 < p_min <= 1.0:
        raise ValueError(f"participation.p_min={p_min} must be in (0, 1] (lower bound on p_n)")
    if not (np.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"participation.alpha={alpha} must be > 0 (Dirichlet concentration of m)")
    d = np.asarray(label_dists, dtype=np.float64)
    if d.ndim != 2 or not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError("label_dists must be an N x C array of non-negative class frequencies")
    c = d.shape[1]
    m = named_rng(seed, "participation-m").dirichlet(np.full(c, alpha))
    return np.minimum(1.0, np.maximum(p_min, c * p_bar * (d @ m)))


class Participation:
    name = "base"

    def __init__(self, num_clients: int, seed: int, label_dists: np.ndarray | None = None) -> None:
        self.num_clients, self.seed = int(num_clients), int(seed)
        self.probs = np.ones(self.num_clients)

    def available(self, round: int) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    # helpers -------------------------------------------------------------------------------------------------------
    def _check_round(self, round: int) -> int:
        round = int(round)
        if round < 1:
            raise ValueError(f"round={round}: rounds start at 1")
        return round


@register_participation("full")
class Full(Participation):
    """Every client takes part in every round."""

    def available(self, round: int) -> np.ndarray:
        return np.ones(self.num_clients, dtype=bool)


@register_participation("uniform")
class Uniform(Participation):
    """``max(1, round(fraction·N))`` clients drawn uniformly without replacement
    each round from the stream ``(seed, "participation", round)`` (FedAvg's C)."""

    def __init__(self, num_clients, seed, label_dists=None, fraction: float = 0.1) -> None:
        super().__init__(num_clients, seed)
        fraction = float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"participation.fraction={fraction} must be in (0, 1]")
        self.k = max(1, int(round(fraction * self.num_clients)))
        self.probs = np.full(self.num_clients, self.k / self.num_clients)

    def available(self, round: int) -> np.ndarray:
        round = self._check_round(round)
        out = np.zeros(self.num_clients, dtype=bool)
        out[named_rng(self.seed, "participation", round).choice(self.num_clients, self.k, replace=False)] = True
        return out


class _ProbPattern(Participation):
    """Patterns driven by per-client probabilities p_n (FedAU's three)."""

    def __init__(
        self,
        num_clients: int,
        seed: int,
        label_dists: np.ndarray | None = None,
        p_bar: float = 0.1,
        p_min: float = 0.02,
        alpha: float = 0.1,
        probs: Sequence[float] | None = None,
        homogeneous_p: float | None = None,
    ) -> None:
        super().__init__(num_clients, seed)
        n = self.num_clients
        if probs is not None and homogeneous_p is not None:
            raise ValueError("participation.probs and participation.homogeneous_p are exclusive; set one to null")
        if probs is not None:
            p = np.asarray(list(probs), dtype=np.float64)
            if p.shape != (n,):
                raise ValueError(f"participation.probs has {p.size} entries; it needs one per client ({n})")
            key = "participation.probs"
        elif homogeneous_p is not None:
            p = np.full(n, float(homogeneous_p))
            key = "participation.homogeneous_p"
        else:
            if label_dists is None:
                raise ValueError(
                    f"participation.name={self.name} draws p_n from the clients' label distributions, but none "
                    "were given; pass label_dists, or set participation.probs / participation.homogeneous_p"
                )
            if np.shape(label_dists)[0] != n:
                raise ValueError(f"label_dists has {np.shape(label_dists)[0]} rows; expected num_clients={n}")
            p = fedau_probs(label_dists, self.seed, p_bar, p_min, alpha)
            key = "participation.p_min"
        if not np.all((p > 0.0) & (p <= 1.0)):
            bad = p[~((p > 0.0) & (p <= 1.0))][0]
            raise ValueError(f"{key}: probability {bad} is outside (0, 1]; every p_n must be in (0, 1]")
        self.probs = p
        self._block = -1
        self._u = np.empty((0, n))

    def _uniforms(self, round: int) -> np.ndarray:
        """u[n] = the round's draw of client n, pure in (seed, round, n)."""
        block, off = divmod(round - 1, _BLOCK)
        if block != self._block:
            self._u = np.stack(
                [named_rng(self.seed, "participation", n, block).random(_BLOCK) for n in range(self.num_clients)], 1
            )
            self._block = block
        return self._u[off]


@register_participation("bernoulli")
class Bernoulli(_ProbPattern):
    """q_n^t ~ Bernoulli(p_n), independent over rounds and clients; stateless."""

    def available(self, round: int) -> np.ndarray:
        return self._uniforms(self._check_round(round)) < self.probs


class _Sequential(_ProbPattern):
    """Stateful patterns: rounds must be asked in order 1, 2, ... (asking the last
    round again returns the same answer); the state is checkpointable."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.round = 0  # last round emitted
        self._last = np.zeros(self.num_clients, dtype=bool)

    def _step(self, round: int) -> np.ndarray:
        raise NotImplementedError

    def available(self, round: int) -> np.ndarray:
        round = self._check_round(round)
        if round == self.round:
            return self._last.copy()
        if round != self.round + 1:
            raise ValueError(
                f"participation '{self.name}' is sequential: asked for round {round} after round {self.round}; "
                "resume by load_state_dict() from a checkpoint of round-1"
            )
        self._last = self._step(round)
        self.round = round
        return self._last.copy()


@register_participation("markov")
class Markov(_Sequential):
    """FedAU ``markov-a``: P(inactive→active) = a, P(active→inactive) =
    b = a(1/p_n − 1); if b > 1 then a ← a/b, b ← 1 (stationary rate p_n).
    Initial state ~ Bernoulli(p_n); the transition is applied before the state
    is read in every round."""

    def __init__(self, num_clients, seed, label_dists=None, a: float = 0.05, **kw: Any) -> None:
        super().__init__(num_clients, seed, label_dists, **kw)
        a = float(a)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"participation.a={a} must be in (0, 1] (P(inactive -> active))")
        to_active = np.full(self.num_clients, a)
        to_inactive = to_active * (1.0 / self.probs - 1.0)
        over = to_inactive > 1.0
        to_active[over] /= to_inactive[over]
        to_inactive[over] = 1.0
        self.to_active, self.to_inactive = to_active, to_inactive
        self.active = np.array(
            [named_rng(self.seed, "participation", n).random() < self.probs[n] for n in range(self.num_clients)]
        )

    def _step(self, round: int) -> np.ndarray:
        u = self._uniforms(round)
        self.active = np.where(self.active, ~(u < self.to_inactive), u < self.to_active)
        return self.active.copy()

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "active": self.active.tolist(), "last": self._last.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        active = np.asarray(state["active"], dtype=bool)
        if active.shape != (self.num_clients,):
            raise ValueError(f"markov state has {active.size} clients; this run has {self.num_clients}")
        self.round, self.active = int(state["round"]), active
        self._last = np.asarray(state.get("last", active), dtype=bool)


@register_participation("cyclic")
class Cyclic(_Sequential):
    """FedAU ``cyclic-L``: A_n = max(1, round(L·p_n)) (half to even),
    B_n = max(1, L − A_n). Start inactive with countdown r ~ U{0..B_n−1};
    each round: if r = 0, toggle and set r to A_n / B_n for the new state;
    then r ← r − 1 and emit the state."""

    def __init__(self, num_clients, seed, label_dists=None, L: int = 100, **kw: Any) -> None:
        super().__init__(num_clients, seed, label_dists, **kw)
        if int(L) < 1:
            raise ValueError(f"participation.L={L} must be >= 1 (cycle length in rounds)")
        self.L = int(L)
        self.active_rounds = np.maximum(1, np.round(self.L * self.probs).astype(np.int64))
        self.inactive_rounds = np.maximum(1, self.L - self.active_rounds)
        self.active = np.zeros(self.num_clients, dtype=bool)
        self.countdown = np.array(
            [named_rng(self.seed, "participation", n).integers(self.inactive_rounds[n]) for n in range(self.num_clients)],
            dtype=np.int64,
        )

    def _step(self, round: int) -> np.ndarray:
        switch = self.countdown == 0
        self.active = np.where(switch, ~self.active, self.active)
        self.countdown = np.where(
            switch, np.where(self.active, self.active_rounds, self.inactive_rounds), self.countdown
        ) - 1
        return self.active.copy()

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "active": self.active.tolist(), "countdown": self.countdown.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        active = np.asarray(state["active"], dtype=bool)
        if active.shape != (self.num_clients,):
            raise ValueError(f"cyclic state has {active.size} clients; this run has {self.num_clients}")
        self.round, self.active = int(state["round"]), active
        self.countdown = np.asarray(state["countdown"], dtype=np.int64)
        self._last = active.copy()


@register_participation("trace")
class Trace(Participation):
    """Availability from a CSV file of ``round,client`` rows (a header line with
    those names is optional; ``#`` starts a comment). A client is available in a
    round iff the row is present. Rounds that the file does not mention: nobody
    is available (an empty round), unless ``cycle: true``, in which case round t
    reads trace round ((t−1) mod R) + 1 with R the largest round in the file.
    ``probs`` = each client's empirical availability over rounds 1..R."""

    def __init__(self, num_clients, seed, label_dists=None, path: str | None = None, cycle: bool = False) -> None:
        super().__init__(num_clients, seed)
        if not path:
            raise ValueError("participation.path is required for participation=trace (a CSV of round,client rows)")
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise ValueError(f"participation.path={p} " + ("is a directory; give the path of a CSV file of round,client rows"
                                                          if p.is_dir() else "does not exist"))
        self.cycle = bool(cycle)
        self.rounds: dict[int, np.ndarray] = {}
        rows: dict[int, list[int]] = {}
        with open(p, newline="") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                row = [c.strip() for c in row]
                if not row or not row[0] or row[0].startswith("#"):
                    continue
                if lineno == 1 and row[0].lower() == "round":
                    continue
                try:
                    r, c = int(row[0]), int(row[1])
                except (ValueError, IndexError):
                    raise ValueError(f"participation.path={p} line {lineno}: expected 'round,client' integers, got {row}")
                if r < 1:
                    raise ValueError(f"participation.path={p} line {lineno}: round {r} < 1 (rounds start at 1)")
                if not 0 <= c < self.num_clients:
                    raise ValueError(
                        f"participation.path={p} line {lineno}: client {c} is outside 0..{self.num_clients - 1}; "
                        "raise num_clients or fix the trace"
                    )
                rows.setdefault(r, []).append(c)
        if not rows:
            raise ValueError(f"participation.path={p} has no 'round,client' rows")
        self.max_round = max(rows)
        counts = np.zeros(self.num_clients)
        for r, cs in rows.items():
            mask = np.zeros(self.num_clients, dtype=bool)
            mask[cs] = True
            self.rounds[r] = mask
            counts += mask
        self.probs = counts / self.max_round

    def available(self, round: int) -> np.ndarray:
        round = self._check_round(round)
        if self.cycle:
            round = (round - 1) % self.max_round + 1
        mask = self.rounds.get(round)
        return mask.copy() if mask is not None else np.zeros(self.num_clients, dtype=bool)
