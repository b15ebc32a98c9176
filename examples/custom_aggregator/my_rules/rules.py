"""Coordinate-wise median (Yin et al., 2018): a robust rule in a dozen lines.

It subclasses ``fedagg.aggregators.Aggregator`` and implements ``aggregate``
only. It checks nothing itself: fedagg calls every rule through
``Aggregator.apply``, which has already refused client ids out of range,
duplicates, parameter names or shapes unlike the global model and non-finite
values, and which refuses a non-finite result afterwards.
"""
from __future__ import annotations

import numpy as np

from fedagg.aggregators import Aggregator, ClientUpdate, Params, RoundInfo
from fedagg.aggregators.base import Metrics, is_float


class CoordinateMedian(Aggregator):
    name = "coordinate_median"

    def aggregate(self, global_params: Params, updates: list[ClientUpdate], info: RoundInfo) -> tuple[Params, Metrics]:
        if not updates:  # nobody replied: keep the model
            return global_params, {"median_of": 0}
        out: Params = {}
        for k, ref in global_params.items():
            stack = np.stack([u.params[k] for u in updates])
            # float tensors: the element-wise median; integer ones (BatchNorm counters): the first client's
            out[k] = np.median(stack, axis=0).astype(ref.dtype) if is_float(ref) else stack[0].copy()
        return out, {"median_of": len(updates)}
