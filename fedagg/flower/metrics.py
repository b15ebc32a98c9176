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
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import MetricRecord, RecordDict

from .options import MetricsAggrFn

log = logging.getLogger("fedagg")

NOT_METRICS = ("partition-id",)


def aggregate_reply_metrics(
    fn: MetricsAggrFn | None,
    contents: Sequence[RecordDict | None],
    metrics: Sequence[Mapping[str, Any]],
    counts: Sequence[int],
    weight_key: str,
) -> MetricRecord:
    """``fn`` (or Flower's weighted mean) over the accepted replies: their
    ``contents`` (given to ``fn``; None for a client of a chunk reply, which
    fedagg's grids send only when there is no ``fn``), each one's metrics and
    checked example count in ``counts``. A hook that raises is logged and gives
    an empty record."""
    if not metrics:
        return MetricRecord()
    if fn is not None:
        if any(c is None for c in contents):
            raise ValueError("a metrics hook needs every reply's content (chunk replies have none)")
        try:
            return fn([c for c in contents if c is not None], weight_key)
        except Exception as e:  # noqa: BLE001 - a user's hook: report it, keep the round
            log.warning("the metrics hook %s failed (%s: %s); the replies' metrics are not aggregated",
                        getattr(fn, "__name__", fn), type(e).__name__, e)
            return MetricRecord()
    keys = [k for k in metrics[0] if k != weight_key and k not in NOT_METRICS and _consistent(k, metrics)]
    return MetricRecord(weighted_mean(metrics, counts, keys))


def weighted_mean(metrics: Sequence[Mapping[str, Any]], counts: Sequence[int],
                  keys: Sequence[str]) -> dict[str, Any]:
    """Flower's ``aggregate_metricrecords`` on plain mappings, operation for
    operation (weights ``w / sum(w)``, then ``value * weight`` summed in reply
    order, lists element-wise), so the result is Flower's to the last bit
    without a RecordDict and MetricRecord per reply."""
    total = sum(counts)
    factors = [w / total for w in counts]
    out: dict[str, Any] = {}
    for m, f in zip(metrics, factors, strict=True):
        for k in keys:
            v = m[k]
            if k not in out:
                out[k] = [x * f for x in v] if isinstance(v, list) else v * f
            elif isinstance(v, list):
                out[k] = [c + x * f for c, x in zip(out[k], v, strict=True)]
            else:
                out[k] = out[k] + v * f
    return out


def _consistent(key: str, metrics: Sequence[Mapping[str, Any]]) -> bool:
    first = metrics[0][key]
    if isinstance(first, list):
        return all(isinstance(m.get(key), list) and len(m[key]) == len(first) for m in metrics)
    return all(key in m and not isinstance(m[key], list) for m in metrics)
