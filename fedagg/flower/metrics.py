"""The replies' own metrics, aggregated as Flower's strategies do.

:func:`aggregate_reply_metrics` runs a Flower metrics hook
(``(list[RecordDict], weighted_by_key) -> MetricRecord``, by default Flower's
``aggregate_metricrecords``: the mean weighted by the example count, lists
element-wise) over the replies fedagg accepted. The default path hands Flower
each reply's metrics with its checked example count as the weight and leaves
out what is not a metric or cannot be averaged: ``partition-id`` (an id), keys
not every reply has, and lists whose lengths differ between replies -- Flower's
own FedAvg refuses such a round as inconsistent; fedagg keeps the keys that
are consistent. A user's hook gets the replies' contents unchanged.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from .options import MetricsAggrFn

log = logging.getLogger("fedagg")

NOT_METRICS = ("partition-id",)


def aggregate_reply_metrics(
    fn: MetricsAggrFn | None,
    contents: Sequence[RecordDict],
    metrics: Sequence[MetricRecord],
    counts: Sequence[int],
    weight_key: str,
) -> MetricRecord:
    """``fn`` (or Flower's weighted mean) over the accepted replies: their
    ``contents``, each one's MetricRecord in ``metrics`` and checked example
    count in ``counts``. A hook that raises is logged and gives an empty record."""
    if not contents:
        return MetricRecord()
    if fn is not None:
        try:
            return fn(list(contents), weight_key)
        except Exception as e:  # noqa: BLE001 - a user's hook: report it, keep the round
            log.warning("the metrics hook %s failed (%s: %s); the replies' metrics are not aggregated",
                        getattr(fn, "__name__", fn), type(e).__name__, e)
            return MetricRecord()
    keys = [k for k in metrics[0] if k != weight_key and k not in NOT_METRICS and _consistent(k, metrics)]
    records = [RecordDict({"metrics": MetricRecord({**{k: m[k] for k in keys}, weight_key: n})})
               for m, n in zip(metrics, counts, strict=True)]
    return aggregate_metricrecords(records, weight_key)


def _consistent(key: str, metrics: Sequence[MetricRecord]) -> bool:
    first = metrics[0][key]
    if isinstance(first, list):
        return all(isinstance(m.get(key), list) and len(m[key]) == len(first) for m in metrics)  # type: ignore[arg-type]
    return all(key in m and not isinstance(m[key], list) for m in metrics)
