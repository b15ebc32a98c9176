"""Small builders shared by the aggregator tests (tiny numpy models)."""
from __future__ import annotations

import numpy as np

from fedagg.aggregators.base import AggregatorContext, ClientUpdate, RoundInfo


def upd(cid, params, n=10, hist=None, acc=None, steps=None):
    return ClientUpdate(
        client_id=cid,
        params={k: np.asarray(v) for k, v in params.items()},
        num_examples=n,
        label_hist=None if hist is None else np.asarray(hist),
        train_accuracy=acc,
        metadata={} if steps is None else {"steps": steps},
    )


def info(rnd, n, replied, asked=None):
    replied = tuple(sorted(replied))
    return RoundInfo(round=rnd, num_clients=n, asked=tuple(asked or replied), replied=replied)


def ctx(n=4, c=3, **kw):
    return AggregatorContext(num_clients=n, num_classes=c, **kw)


def scalar(v):
    return {"w": np.array([float(v)])}
