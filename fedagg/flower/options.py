"""Flower's own strategy options, with Flower's meaning and defaults.

:class:`FlowerOptions` holds the ten constructor options of Flower's
``FedAvg`` (``flwr.serverapp.strategy.FedAvg``) that every fedagg strategy
takes too. How they compose with fedagg's simulation:

* **Training sample.** fedagg's participation pattern (when the strategy has
  one) says which clients are *available* in a round -- it models the clients'
  side (who is online). ``fraction_train`` / ``min_train_nodes`` are the
  server's choice *among those*, as Flower's FedAvg samples among the
  connected nodes: ``max(int(fraction_train * available), min_train_nodes)``
  clients, capped at the number available (a pattern can make fewer clients
  available than the minimum; the round then asks all of them rather than
  waiting for nodes that are offline by design). The draw is seeded by the
  named stream ``("train-sample", round)``, so a run repeats exactly. With the
  default ``fraction_train=1.0`` every available client is asked.
* **Evaluation sample.** ``max(int(fraction_evaluate * clients), min_evaluate_nodes)``
  of the known clients (stream ``("evaluate-sample", round)``), capped at their
  number; ``fraction_evaluate=0`` skips client-side evaluation.
* ``min_available_nodes``: the strategy waits for this many nodes before the
  first round when ``num_clients`` is not given.
* ``weighted_by_key``: the reply metric holding the example count (the weight
  of FedAvg-style rules and of the metric means).
* ``arrayrecord_key`` / ``configrecord_key``: the record names in the messages
  the strategy sends. A reply's single ArrayRecord / MetricRecord is read
  whatever its name, as Flower does.
* ``train_metrics_aggr_fn`` / ``evaluate_metrics_aggr_fn``: Flower's
  ``(list[RecordDict], weighted_by_key) -> MetricRecord`` hooks; the default
  is Flower's ``aggregate_metricrecords`` (weighted mean, lists element-wise).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from flwr.app import MetricRecord, RecordDict

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]


@dataclass
class FlowerOptions:
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    weighted_by_key: str = "num-examples"
    arrayrecord_key: str = "arrays"
    configrecord_key: str = "config"
    train_metrics_aggr_fn: MetricsAggrFn | None = None
    evaluate_metrics_aggr_fn: MetricsAggrFn | None = None

    def __post_init__(self) -> None:
        for name in ("fraction_train", "fraction_evaluate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r} must be a number in [0, 1]")
            setattr(self, name, float(v))
        for name in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} must be a non-negative integer")
        for name in ("weighted_by_key", "arrayrecord_key", "configrecord_key"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValueError(f"{name}={v!r} must be a non-empty string")
        for name in ("train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"):
            v = getattr(self, name)
            if v is not None and not callable(v):
                raise ValueError(f"{name}={v!r} must be a function (list[RecordDict], str) -> MetricRecord")
        if self.fraction_train == 0.0:  # Flower: nothing to sample, so no minimum either
            self.min_train_nodes = 0
        if self.fraction_evaluate == 0.0:
            self.min_evaluate_nodes = 0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def train_sample_size(self, available: int) -> int:
        """How many of ``available`` clients a training round asks."""
        return _sample_size(self.fraction_train, self.min_train_nodes, available)

    def evaluate_sample_size(self, clients: int) -> int:
        """How many of ``clients`` a client-side evaluation asks."""
        return _sample_size(self.fraction_evaluate, self.min_evaluate_nodes, clients)


def _sample_size(fraction: float, minimum: int, n: int) -> int:
    if fraction == 0.0:
        return 0
    return min(n, max(int(n * fraction), minimum))  # Flower's int() (floor), then its minimum
