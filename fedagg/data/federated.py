"""One federated dataset: the data, its partition into client shards, optional
noisy / out-of-distribution clients and the per-client train/validation split,
built from a flat *spec* of scalars.

The same spec travels in every Flower message (a ConfigRecord holds only
scalars), so the server and every client process rebuild exactly the same
shards from the seed; each process builds a spec once and caches it.

Spec keys: ``seed``, ``num_clients``, ``val_fraction``, ``server_holdout`` (optional: the
class-balanced fraction of the training set held out of every client), ``dataset.*``,
``partition.*`` and ``noise.*``:

- ``noise.kind``: ``none`` | ``label_flip`` | ``label_permute`` | ``gaussian``
  (``noise.name`` is accepted as an alias).
- ``noise.fraction``: fraction of clients made noisy, ``round(fraction·N)``
  clients chosen by the stream ``(seed, "noise-clients")``.
- ``label_flip``: each label of a noisy client is, with probability
  ``noise.rate``, replaced by a label drawn uniformly from the *other* C−1
  classes (so the fraction of wrong labels is ``rate`` in expectation).
- ``label_permute``: all labels of every noisy client go through one fixed
  random derangement of the classes (shared by the noisy clients; no class maps
  to itself), stream ``(seed, "noise-permute")``.
- ``gaussian``: features of noisy clients get additive N(0, ``noise.std``²).

Noise is applied to the client's whole shard before its train/val split, so
``label_hist`` reports the labels the client actually holds.

Shards are built when a client is asked and kept in a bounded LRU cache
(``CLIENT_CACHE`` clients per process), never for all clients up front.
With ``dataset=synthetic partition=natural`` not even the pool exists: each
client generates its own samples from ``(seed, user id)`` when asked
(:class:`fedagg.data.datasets.SyntheticUsers`), so a million registered
clients cost one integer each until they train.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from ..seeding import rng as named_rng
from .datasets import Dataset, SyntheticUsers, load_dataset
from .partition import partition

CLIENT_CACHE = 4096  # shards kept per process (least recently used are rebuilt when asked again)

NOISE_KINDS = ("none", "label_flip", "label_permute", "gaussian")


def sub(spec: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Options under ``prefix.`` without the prefix and without ``name``."""
    return {k[len(prefix) + 1 :]: v for k, v in spec.items() if k.startswith(prefix + ".") and k != prefix + ".name"}


@dataclass
class ClientData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class NoiseSpec:
    kind: str = "none"
    fraction: float = 0.0
    rate: float = 0.0
    std: float = 0.0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "NoiseSpec":
        opts = {k[len("noise.") :]: v for k, v in spec.items() if k.startswith("noise.")}
        kind = opts.pop("kind", None) or opts.pop("name", None) or "none"
        opts.pop("name", None)
        unknown = sorted(set(opts) - {"fraction", "rate", "std"})
        if unknown:
            raise ValueError(f"noise.{unknown[0]} is not a noise option; valid: kind, fraction, rate, std")
        kind = str(kind)
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise.kind='{kind}' is not known; valid choices: {', '.join(NOISE_KINDS)}")
        vals = {k: 0.0 if opts.get(k) is None else float(opts[k]) for k in ("fraction", "rate", "std")}
        if not 0.0 <= vals["fraction"] <= 1.0:
            raise ValueError(f"noise.fraction={vals['fraction']} must be in [0, 1] (fraction of noisy clients)")
        if not 0.0 <= vals["rate"] <= 1.0:
            raise ValueError(f"noise.rate={vals['rate']} must be in [0, 1] (fraction of flipped labels)")
        if not (np.isfinite(vals["std"]) and vals["std"] >= 0.0):
            raise ValueError(f"noise.std={vals['std']} must be >= 0")
        return cls(kind, **vals)


def class_balanced(y: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction·|y|/C) samples of every class (fewer if a
    class is smaller), drawn from the stream ``(seed, "server-holdout")``."""
    per_class = max(1, round(fraction * len(y) / num_classes))
    r = named_rng(seed, "server-holdout")
    pick = [r.permutation(np.flatnonzero(y == c))[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(pick)).astype(np.int64)


class FederatedData:
    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        if "seed" not in spec or "num_clients" not in spec or "dataset.name" not in spec:
            raise ValueError("the federated-data spec needs 'seed', 'num_clients' and 'dataset.name'")
        self.seed = seed = int(spec["seed"])
        self.num_clients = int(spec["num_clients"])
        self.noise = NoiseSpec.from_spec(spec)  # validate cheap options before loading data
        self.val_fraction = float(spec.get("val_fraction", 0.0) or 0.0)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        self.server_holdout = float(spec.get("server_holdout", 0.0) or 0.0)
        if not 0.0 <= self.server_holdout < 1.0:
            raise ValueError(f"server_holdout={self.server_holdout} must be in [0, 1)")
        self.holdout = np.array([], dtype=np.int64)  # training indices held out of every client (server data)
        self.users: SyntheticUsers | None = None
        self.parts: list[np.ndarray] | None = None
        pname = str(spec.get("partition.name", "iid"))
        if pname == "natural" and spec["dataset.name"] == "synthetic":  # each user generates its own shard
            if self.server_holdout:
                raise ValueError("server_holdout needs a shared training set; synthetic natural users have none")
            self.users = SyntheticUsers(seed, **sub(spec, "dataset"))
            if self.users.num_users != self.num_clients:
                raise ValueError(f"partition=natural needs num_clients == dataset.num_users "
                                 f"({self.users.num_users}); got num_clients={self.num_clients}")
            self.data: Dataset = self.users.server_dataset()
        else:
            self.data = load_dataset(str(spec["dataset.name"]), seed=seed, **sub(spec, "dataset"))
            y = self.data.y_train
            pool = np.arange(len(y))
            if self.server_holdout:
                self.holdout = class_balanced(y, self.server_holdout, self.data.num_classes, seed)
                pool = np.setdiff1d(pool, self.holdout)
            groups = self.data.client_ids
            parts = partition(
                pname, y[pool], self.num_clients, seed=seed,
                groups=None if groups is None else np.asarray(groups)[pool], **sub(spec, "partition"),
            )
            self.parts = [pool[p] for p in parts]
        self.noisy_clients = self._choose_noisy()
        self._permutation = self._derangement() if self.noise.kind == "label_permute" else None
        self._clients: OrderedDict[int, ClientData] = OrderedDict()

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    # -- noise ---------------------------------------------------------------------------------------------------
    def _choose_noisy(self) -> np.ndarray:
        if self.noise.kind == "none":
            return np.array([], dtype=np.int64)
        k = int(round(self.noise.fraction * self.num_clients))
        return np.sort(named_rng(self.seed, "noise-clients").choice(self.num_clients, size=k, replace=False))

    def _derangement(self) -> np.ndarray:
        c = self.num_classes
        r = named_rng(self.seed, "noise-permute")
        if c < 2:
            return np.arange(c)
        while True:  # rejection: about e tries on average
            p = r.permutation(c)
            if np.all(p != np.arange(c)):
                return p

    def is_noisy(self, cid: int) -> bool:
        return bool(np.isin(cid, self.noisy_clients))

    def _apply_noise(self, cid: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.is_noisy(cid):
            return x, y
        kind, c = self.noise.kind, self.num_classes
        r = named_rng(self.seed, "noise", cid)
        if kind == "label_flip" and c > 1:
            flip = r.random(len(y)) < self.noise.rate
            shift = r.integers(1, c, size=len(y))  # uniform over the other C-1 classes
            y = np.where(flip, (y + shift) % c, y).astype(np.int64)
        elif kind == "label_permute":
            assert self._permutation is not None  # made in __init__ for this kind
            y = self._permutation[y].astype(np.int64)
        elif kind == "gaussian":
            x = (x + r.normal(0.0, self.noise.std, size=x.shape)).astype(np.float32)
        return x, y

    # -- clients -------------------------------------------------------------------------------------------------
    def client(self, cid: int) -> ClientData:
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"partition-id={cid} is out of range 0..{self.num_clients - 1}")
        if cid in self._clients:
            self._clients.move_to_end(cid)
            return self._clients[cid]
        if self.users is not None:
            x, y = self.users.user(cid)[:2]
        else:
            assert self.parts is not None
            idx = self.parts[cid]
            x, y = self.data.x_train[idx], self.data.y_train[idx]
        x, y = self._apply_noise(cid, x, y)
        n_val = self.val_size(len(y))
        perm = named_rng(self.seed, "val-split", cid).permutation(len(y))
        va, tr = perm[:n_val], perm[n_val:]
        data = self._clients[cid] = ClientData(x[tr], y[tr], x[va], y[va])
        if len(self._clients) > CLIENT_CACHE:
            self._clients.popitem(last=False)
        return data

    def train_size(self, cid: int) -> int:
        """``len(self.client(cid).y_train)`` without building the shard."""
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"partition-id={cid} is out of range 0..{self.num_clients - 1}")
        if self.users is not None:
            n = int(self.users.sizes[cid])
            n -= self.users.test_size(n)
        else:
            assert self.parts is not None
            n = len(self.parts[cid])
        return n - self.val_size(n)

    def val_size(self, n: int) -> int:
        """How many of a client's ``n`` samples are its validation split."""
        return int(round(n * self.val_fraction))

    def label_hist(self, cid: int) -> np.ndarray:
        return np.bincount(self.client(cid).y_train, minlength=self.num_classes)

    def label_dists(self) -> np.ndarray:
        """D_n for every client (rows sum to 1): simulation truth. Builds every shard:
        use :meth:`lazy_label_dists` where it may not be needed."""
        h = np.stack([self.label_hist(i) for i in range(self.num_clients)]).astype(np.float64)
        return h / np.maximum(h.sum(1, keepdims=True), 1.0)

    def lazy_label_dists(self) -> "LazyLabelDists":
        """:meth:`label_dists` computed only when something reads it as an array."""
        return LazyLabelDists(self)


class LazyLabelDists:
    """An array-like N x C label-distribution matrix, built on first use
    (participation patterns that never look at the data never pay for it)."""

    def __init__(self, fd: FederatedData) -> None:
        self._fd = fd
        self._value: np.ndarray | None = None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._value is None:
            self._value = self._fd.label_dists()
        return self._value if dtype is None else self._value.astype(dtype)


def spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(sorted(spec.items())), default=str)


@lru_cache(maxsize=4)
def _cached(key: str) -> FederatedData:
    return FederatedData(json.loads(key))


def get_federated_data(spec: Mapping[str, Any]) -> FederatedData:
    """Build (once per process) the federated dataset described by ``spec``."""
    return _cached(spec_key(spec))


def federated_data(key: str) -> FederatedData:
    """:func:`get_federated_data` of the spec whose :func:`spec_key` is ``key``."""
    return _cached(key)
