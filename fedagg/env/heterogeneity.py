"""Compute heterogeneity and faults.

``plan(round, client) -> dict`` tells one client what the simulation does to
it this round; it is a pure function of (seed, round, client) -- every draw
comes from the stream ``rng(seed, "heterogeneity", round, client)`` (or
``(seed, "heterogeneity", client)`` for per-client constants) -- so it does not
depend on scheduling order or worker count. Keys (all optional):
``epochs`` (int: local epochs this round), ``work_fraction`` (float in (0,1]:
a straggler's partial work), ``fault`` ("crash" | "dropout" | "deadline").

=============  ===============================================================================
name           effect
=============  ===============================================================================
none           nothing
epochs         ``epochs`` ~ U{min..max}, drawn once per client (``per: client``) or per
               (round, client) (``per: round``)
stragglers     with probability ``rate`` per (round, client) the client is slow:
               ``mode: partial`` -> ``work_fraction`` ~ U(work_min, work_max) ⊂ (0, 1);
               ``mode: drop`` -> ``fault: deadline`` (misses the round deadline)
dropouts       with probability ``rate``: ``fault: dropout`` (leaves mid-round, no reply)
crashes        with probability ``rate``: ``fault: crash`` (the client process fails)
=============  ===============================================================================

Rates are per-(round, client) Bernoulli probabilities, so over many draws the
fraction of affected clients matches ``rate``; the count in a single round varies.
"""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from ..seeding import rng as named_rng

_MODELS: Registry[Callable[..., "Heterogeneity"]] = Registry("heterogeneity.name")


register_heterogeneity = _MODELS.register
available = _MODELS.available


def build_heterogeneity(name: str, num_clients: int, seed: int, **options: Any) -> "Heterogeneity":
    cls = _MODELS.get(name)
    options = {k: v for k, v in options.items() if k != "name" and v is not None}
    try:
        return cls(num_clients, seed, **options)
    except TypeError as e:
        raise ValueError(f"heterogeneity '{name}': bad option ({e}); check the heterogeneity.* keys") from e


def _rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"heterogeneity.rate={rate} must be in [0, 1] (probability per round and client)")
    return rate


class Heterogeneity:
    name = "base"

    def __init__(self, num_clients: int, seed: int) -> None:
        self.num_clients, self.seed = int(num_clients), int(seed)

    def plan(self, round: int, client: int) -> dict[str, Any]:
        return {}

    def _draw(self, round: int, client: int):
        if not 0 <= int(client) < self.num_clients:
            raise ValueError(f"client={client} is out of range 0..{self.num_clients - 1}")
        return named_rng(self.seed, "heterogeneity", int(round), int(client))


@register_heterogeneity("none")
class NoHeterogeneity(Heterogeneity):
    """Every client does the configured work and never fails."""


@register_heterogeneity("epochs")
class Epochs(Heterogeneity):
    """Local epochs ~ uniform integer in [min, max]."""

    def __init__(self, num_clients: int, seed: int, min: int = 1, max: int = 5, per: str = "client") -> None:
        super().__init__(num_clients, seed)
        self.min, self.max, self.per = int(min), int(max), str(per)
        if self.min < 1:
            raise ValueError(f"heterogeneity.min={min} must be >= 1 (local epochs)")
        if self.max < self.min:
            raise ValueError(f"heterogeneity.max={max} must be >= heterogeneity.min={min}")
        if self.per not in ("client", "round"):
            raise ValueError(f"heterogeneity.per='{per}' must be 'client' (fixed per client) or 'round'")

    def plan(self, round: int, client: int) -> dict[str, Any]:
        if self.per == "client":
            self._draw(round, client)  # range check
            g = named_rng(self.seed, "heterogeneity", int(client))
        else:
            g = self._draw(round, client)
        return {"epochs": int(g.integers(self.min, self.max + 1))}


@register_heterogeneity("stragglers")
class Stragglers(Heterogeneity):
    def __init__(
        self,
        num_clients: int,
        seed: int,
        rate: float = 0.1,
        mode: str = "partial",
        work_min: float = 0.1,
        work_max: float = 0.9,
    ) -> None:
        super().__init__(num_clients, seed)
        self.rate, self.mode = _rate(rate), str(mode)
        if self.mode not in ("partial", "drop"):
            raise ValueError(f"heterogeneity.mode='{mode}' must be 'partial' (do less work) or 'drop' (miss deadline)")
        self.work_min, self.work_max = float(work_min), float(work_max)
        if not 0.0 < self.work_min <= self.work_max < 1.0:
            raise ValueError(
                f"heterogeneity.work_min={work_min} / heterogeneity.work_max={work_max} must satisfy "
                "0 < work_min <= work_max < 1"
            )

    def plan(self, round: int, client: int) -> dict[str, Any]:
        g = self._draw(round, client)
        slow, w = g.random() < self.rate, g.uniform(self.work_min, self.work_max)
        if not slow:
            return {}
        if self.mode == "drop":
            return {"fault": "deadline"}
        return {"work_fraction": float(min(max(w, self.work_min), self.work_max))}


class _Fault(Heterogeneity):
    fault = ""

    def __init__(self, num_clients: int, seed: int, rate: float = 0.1) -> None:
        super().__init__(num_clients, seed)
        self.rate = _rate(rate)

    def plan(self, round: int, client: int) -> dict[str, Any]:
        return {"fault": self.fault} if self._draw(round, client).random() < self.rate else {}


@register_heterogeneity("dropouts")
class Dropouts(_Fault):
    """The client leaves mid-round: it trains (maybe) but never replies."""

    fault = "dropout"


@register_heterogeneity("crashes")
class Crashes(_Fault):
    """The client process fails with an error."""

    fault = "crash"
