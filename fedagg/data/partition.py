"""Partitions of a training set into N client shards (lists of indices).
All are deterministic functions of (labels, num_clients, seed, options)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..seeding import rng as named_rng

_PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {}


def register_partition(name: str):
    def deco(fn):
        _PARTITIONERS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_PARTITIONERS)


def partition(name: str, labels: np.ndarray, num_clients: int, seed: int = 0, **options: Any) -> list[np.ndarray]:
    if name not in _PARTITIONERS:
        raise ValueError(f"partition.name='{name}' is not known; valid choices: {', '.join(available())}")
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be >= 1")
    if num_clients > len(labels):
        raise ValueError(
            f"num_clients={num_clients} exceeds the {len(labels)} training samples; lower num_clients"
        )
    parts = _PARTITIONERS[name](np.asarray(labels), num_clients, named_rng(seed, "partition"), **options)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(
            f"partition '{name}' left client(s) {empty[:10]} empty; raise partition.alpha or lower num_clients"
        )
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@register_partition("iid")
def iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), n))


@register_partition("dirichlet")
def dirichlet(
    labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float = 0.5, min_size: int = 10
) -> list[np.ndarray]:
    """NIID-1 (NIID-Bench / FedDisco / MOON): per class, proportions ~ Dir(α·1_N);
    clients already holding ≥ N_total/N samples get none of the class; redraw
    until every client has ≥ ``min_size`` samples."""
    if alpha <= 0:
        raise ValueError(f"partition.alpha={alpha} must be > 0")
    classes = np.unique(labels)
    total = len(labels)
    min_size = min(min_size, total // n)
    for _ in range(1000):
        idx = [[] for _ in range(n)]
        for c in classes:
            ids = np.flatnonzero(labels == c)
            rng.shuffle(ids)
            p = rng.dirichlet(np.full(n, alpha))
            p = np.array([pi * (len(ix) < total / n) for pi, ix in zip(p, idx)])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(ids)).astype(int)[:-1]
            for i, chunk in enumerate(np.split(ids, cuts)):
                idx[i].extend(chunk.tolist())
        if min(len(ix) for ix in idx) >= min_size:
            return [np.array(ix) for ix in idx]
    raise ValueError(
        f"partition.alpha={alpha}: could not give every one of {n} clients >= {min_size} samples; "
        "raise alpha or lower num_clients"
    )
