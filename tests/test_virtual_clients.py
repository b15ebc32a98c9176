"""Registered clients cost nothing until asked: no query round, shards built
on demand (bounded cache), synthetic users generated from (seed, user id)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from fedagg_testing import compose

from fedagg.data import federated
from fedagg.data.federated import FederatedData, get_federated_data
from fedagg.experiment import run

N = 100_000


def _spec(n: int) -> dict:
    return {"seed": 0, "num_clients": n, "dataset.name": "synthetic", "dataset.num_users": n,
            "dataset.num_samples": 10 * n, "dataset.test_users": 50, "partition.name": "natural"}


def test_hundred_thousand_clients_start_fast_and_build_only_asked_shards(tmp_path, monkeypatch):
    from fedagg.config import load
    from fedagg.experiment import data_spec
    from fedagg.runtime.inprocess import OffsetMap

    def no_walk(self):  # a round asks 20 clients: nothing may walk all N registered ones
        raise AssertionError(f"iterated over all {len(self)} entries of the node <-> client map")

    monkeypatch.setattr(OffsetMap, "__iter__", no_walk)

    cfg = compose("dataset=synthetic", f"dataset.num_users={N}", f"dataset.num_samples={10 * N}",
                  "dataset.test_users=50", "partition=natural", f"num_clients={N}", "model=mlp",
                  "participation=uniform", f"participation.fraction={20 / N}", "rounds=2",
                  "runtime=inprocess", "train.epochs=1")
    t0 = time.perf_counter()
    rows = run(cfg, tmp_path)
    took = time.perf_counter() - t0
    assert [r["clients_replied"] for r in rows] == [20, 20]
    fd = get_federated_data(data_spec(load(cfg)))  # the run's own (cached) federated data
    assert fd.parts is None and len(fd.data.x_train) == 0  # no pool
    assert 20 <= len(fd._clients) <= 40  # only the asked clients' shards were built
    assert took < 60, took  # was minutes: a query round to every node and a shard per client


def test_shard_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(federated, "CLIENT_CACHE", 3)
    fd = FederatedData(_spec(1000))
    first = fd.client(0).x_train.copy()
    for cid in range(1, 10):
        fd.client(cid)
    assert len(fd._clients) == 3 and 0 not in fd._clients
    assert np.array_equal(fd.client(0).x_train, first)  # rebuilt identically when asked again


def test_synthetic_test_users_bounds_the_test_set():
    from fedagg.data.datasets import SyntheticUsers, load_dataset

    users = SyntheticUsers(seed=1, num_users=20, num_samples=400, test_users=5)
    x_te, y_te = users.test_set()
    assert len(y_te) == sum(len(users.user(k)[3]) for k in range(5))
    pool = load_dataset("synthetic", seed=1, num_users=20, num_samples=400, test_users=5)
    assert np.array_equal(pool.x_test, x_te) and np.array_equal(pool.y_test, y_te)
    with pytest.raises(ValueError, match="dataset.test_users"):
        SyntheticUsers(num_users=5, num_samples=100, test_users=0)


@pytest.mark.parametrize("spec", [
    {"seed": 3, "num_clients": 12, "dataset.name": "digits", "partition.name": "dirichlet",
     "partition.alpha": 0.3, "val_fraction": 0.2},
    {**_spec(40), "val_fraction": 0.1},
])
def test_train_size_is_the_shard_size_without_building_it(spec):
    fd = FederatedData(spec)
    sizes = [fd.train_size(c) for c in range(fd.num_clients)]
    assert not fd._clients  # nothing built
    assert sizes == [len(fd.client(c).y_train) for c in range(fd.num_clients)]
    assert len(set(sizes)) > 1  # unequal shards: the check above could fail
    with pytest.raises(ValueError, match=f"partition-id={fd.num_clients} is out of range"):
        fd.train_size(fd.num_clients)
