"""One federated dataset: the data, its partition into client shards and the
per-client train/validation split, built from a flat *spec* of scalars.

The same spec travels in every Flower message (a ConfigRecord holds only
scalars), so the server and every client process rebuild exactly the same
shards from the seed; each process builds a spec once and caches it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from ..seeding import rng as named_rng
from .datasets import Dataset, load_dataset
from .partition import partition

SPEC_PREFIXES = ("dataset.", "partition.", "noise.")


def sub(spec: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Options under ``prefix.`` without the prefix and without ``name``."""
    return {k[len(prefix) + 1 :]: v for k, v in spec.items() if k.startswith(prefix + ".") and k != prefix + ".name"}


@dataclass
class ClientData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


class FederatedData:
    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        seed = int(spec["seed"])
        self.num_clients = int(spec["num_clients"])
        self.data: Dataset = load_dataset(str(spec["dataset.name"]), seed=seed, **sub(spec, "dataset"))
        self.parts = partition(
            str(spec.get("partition.name", "iid")), self.data.y_train, self.num_clients, seed=seed,
            **sub(spec, "partition"),
        )
        self.val_fraction = float(spec.get("val_fraction", 0.0))
        self._clients: dict[int, ClientData] = {}

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def client(self, cid: int) -> ClientData:
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"partition-id={cid} is out of range 0..{self.num_clients - 1}")
        if cid not in self._clients:
            idx = self.parts[cid]
            x, y = self.data.x_train[idx], self.data.y_train[idx]
            n_val = int(round(len(y) * self.val_fraction))
            perm = named_rng(int(self.spec["seed"]), "val-split", cid).permutation(len(y))
            va, tr = perm[:n_val], perm[n_val:]
            self._clients[cid] = ClientData(x[tr], y[tr], x[va], y[va])
        return self._clients[cid]

    def label_hist(self, cid: int) -> np.ndarray:
        return np.bincount(self.client(cid).y_train, minlength=self.num_classes)

    def label_dists(self) -> np.ndarray:
        """D_n for every client (rows sum to 1): simulation truth."""
        h = np.stack([self.label_hist(i) for i in range(self.num_clients)]).astype(np.float64)
        return h / h.sum(1, keepdims=True)


def spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(sorted(spec.items())), default=str)


@lru_cache(maxsize=4)
def _cached(key: str) -> FederatedData:
    return FederatedData(json.loads(key))


def get_federated_data(spec: Mapping[str, Any]) -> FederatedData:
    """Build (once per process) the federated dataset described by ``spec``."""
    return _cached(spec_key(spec))
