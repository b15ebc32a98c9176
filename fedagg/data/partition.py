"""Partitions of a training set into N client shards (lists of indices).

All are deterministic functions of (labels, num_clients, seed, options): the
only randomness is the named stream ``rng(seed, "partition")``.

=================  =====================================================================
name               scheme (source)
=================  =====================================================================
iid                equal random split
dirichlet          NIID-1 of NIID-Bench / MOON / FedDisco
dirichlet_fedau    FedAU's per-client Dir(α·1_C) + contiguous cumulative split
dirichlet_fedlaw   FedLAW's per-class Dir(α·1_N), rounded counts, last client takes
                   the remainder
shards             FedAvg's pathological split: sort by label, ``shards_per_client``
                   equal shards per client
quantity_skew      IID content, log-normal client sizes (``sigma``)
niid2              FedDisco NIID-2: ``num_biased`` clients with C/5 classes each, the
                   rest one shard of every class
natural            the dataset's own client ids (``synthetic``; ``femnist`` by writer and
                   ``shakespeare`` by speaking role, numbered by flwr-datasets'
                   ``NaturalIdPartitioner``)
=================  =====================================================================
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..registry import Registry
from ..seeding import rng as named_rng

_PARTITIONERS: Registry[Callable[..., list[np.ndarray]]] = Registry("partition.name")
# partitions that may leave samples unassigned by design (FedDisco NIID-2 leftovers)
PARTIAL_COVER = {"niid2", "flwr_pathological"}  # flwr: classes no client draws stay unused


register_partition = _PARTITIONERS.register
available = _PARTITIONERS.available


def _drop_none(options: dict[str, Any]) -> dict[str, Any]:
    """``key: null`` in a config means "use the default"."""
    return {k: v for k, v in options.items() if v is not None and v != ""}


def partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
    **options: Any,
) -> list[np.ndarray]:
    """Split ``labels``' indices into ``num_clients`` sorted index arrays.

    ``groups`` (one natural client id per sample) is only used by ``natural``.
    """
    fn = _PARTITIONERS.get(name)
    num_clients = int(num_clients)
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be >= 1")
    if num_clients > len(labels):
        raise ValueError(
            f"num_clients={num_clients} exceeds the {len(labels)} training samples; lower num_clients"
        )
    options = _drop_none(options)
    labels = np.asarray(labels)
    r = named_rng(seed, "partition")
    if name == "natural":
        parts = fn(labels, num_clients, r, groups=groups, **options)
    else:
        try:
            parts = fn(labels, num_clients, r, **options)
        except TypeError as e:  # unknown option
            raise ValueError(f"partition '{name}': bad option ({e}); check the partition.* keys") from e
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(
            f"partition '{name}' left client(s) {empty[:10]} empty; raise partition.alpha or lower num_clients"
        )
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"partition.alpha={alpha} must be a finite number > 0 (e.g. 0.1 non-IID ... 100 near-IID)")
    return alpha


def _classes(labels: np.ndarray) -> int:
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative integers")
    return int(labels.max()) + 1 if labels.size else 0


@register_partition("iid")
def iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), n))


@register_partition("dirichlet")
def dirichlet(
    labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float = 0.5, min_size: int = 10
) -> list[np.ndarray]:
    """NIID-1 (NIID-Bench / FedDisco / MOON): per class, proportions ~ Dir(α·1_N);
    clients already holding ≥ N_total/N samples get none of the class; split the
    shuffled class indices at ``int(cumsum(p)·|I_c|)``; redraw everything until
    every client has ≥ ``min_size`` samples (FedDisco: 10)."""
    alpha = _check_alpha(alpha)
    if int(min_size) < 0:
        raise ValueError(f"partition.min_size={min_size} must be >= 0")
    classes = np.unique(labels)
    total = len(labels)
    min_size = min(int(min_size), total // n)
    for _ in range(1000):
        idx: list[list[int]] = [[] for _ in range(n)]
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
            return [np.array(ix, dtype=np.int64) for ix in idx]
    raise ValueError(
        f"partition.alpha={alpha}: could not give every one of {n} clients >= {min_size} samples; "
        "raise alpha or lower num_clients or partition.min_size"
    )


@register_partition("dirichlet_fedau")
def dirichlet_fedau(labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float = 0.1) -> list[np.ndarray]:
    """FedAU (IBM/fedau util.partition): π_n ~ Dir(α·1_C) per *client*; for each
    class c (indices in dataset order, no shuffle) client n gets the contiguous
    slice ending at ``np.round(|I_c|·Σ_{m≤n} π_{m,c} / Σ_m π_{m,c})`` (half to even)."""
    alpha = _check_alpha(alpha)
    num_classes = _classes(labels)
    pi = rng.dirichlet(np.full(num_classes, alpha), n)  # (N, C)
    col_sum = np.sum(pi, axis=0)
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    start = np.zeros(num_classes, dtype=np.int64)
    out = []
    for i in range(n):
        chunks = []
        for c in range(num_classes):
            end = int(np.round(len(by_class[c]) * np.sum(pi[: i + 1, c]) / col_sum[c]))
            chunks.append(by_class[c][start[c] : end])
            start[c] = max(start[c], end)
        out.append(np.concatenate(chunks) if chunks else np.array([], dtype=np.int64))
    return out


@register_partition("dirichlet_fedlaw")
def dirichlet_fedlaw(labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float = 0.5) -> list[np.ndarray]:
    """FedLAW (datasets.build_non_iid_by_dirichlet_new): shuffle each class,
    draw π_{·,c} ~ Dir(α·1_N) per class, client counts ``round(π_{n,c}·|I_c|)``
    (half to even), contiguous cumulative slices; the last client takes the
    remainder of every class (a client whose cumulative start already passed
    |I_c| gets nothing of that class, as in the official slicing)."""
    alpha = _check_alpha(alpha)
    num_classes = _classes(labels)
    by_class = []
    for c in range(num_classes):
        ids = np.flatnonzero(labels == c)
        rng.shuffle(ids)
        by_class.append(ids)
    pi = rng.dirichlet(np.full(n, alpha), num_classes).T  # (N, C)
    sizes = np.array([len(b) for b in by_class])
    counts = np.round(pi * sizes[None, :]).astype(np.int64)
    ends = np.cumsum(counts, axis=0)
    ends[-1, :] = sizes
    out = []
    for i in range(n):
        chunks = []
        for c in range(num_classes):
            s = 0 if i == 0 else int(ends[i - 1, c])
            chunks.append(by_class[c][s : int(ends[i, c])])
        out.append(np.concatenate(chunks) if chunks else np.array([], dtype=np.int64))
    return out


@register_partition("shards")
def shards(labels: np.ndarray, n: int, rng: np.random.Generator, shards_per_client: int = 2) -> list[np.ndarray]:
    """FedAvg's pathological non-IID split: sort by label (random order within a
    class), cut into ``n·shards_per_client`` near-equal contiguous shards and give
    each client ``shards_per_client`` random ones. Every sample is assigned."""
    k = int(shards_per_client)
    if k < 1:
        raise ValueError(f"partition.shards_per_client={shards_per_client} must be >= 1")
    if n * k > len(labels):
        raise ValueError(
            f"partition.shards_per_client={k} x num_clients={n} exceeds the {len(labels)} samples; lower one"
        )
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, n * k)
    assign = rng.permutation(n * k).reshape(n, k)
    return [np.concatenate([pieces[j] for j in row]) for row in assign]


def _largest_remainder(weights: np.ndarray, total: int, minimum: int = 1) -> np.ndarray:
    """Integer sizes ≥ ``minimum`` summing to ``total``, proportional to ``weights``."""
    n = len(weights)
    free = total - minimum * n
    raw = weights / weights.sum() * free
    sizes = np.floor(raw).astype(np.int64)
    rest = free - sizes.sum()
    sizes[np.argsort(-(raw - sizes), kind="stable")[:rest]] += 1
    return sizes + minimum


@register_partition("quantity_skew")
def quantity_skew(
    labels: np.ndarray, n: int, rng: np.random.Generator, sigma: float = 1.0, min_size: int = 1
) -> list[np.ndarray]:
    """IID label content, client sizes ∝ LogNormal(0, σ²) (NIID-Bench's quantity
    skew uses Dirichlet; log-normal follows LEAF/FedProx). σ=0 gives equal sizes;
    every client gets at least ``min_size`` samples."""
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"partition.sigma={sigma} must be >= 0 (0 = equal sizes, 1-2 = strong skew)")
    min_size = int(min_size)
    if min_size < 1 or min_size * n > len(labels):
        raise ValueError(f"partition.min_size={min_size} must be in 1..{len(labels) // n} for {n} clients")
    w = rng.lognormal(0.0, sigma, n)
    sizes = _largest_remainder(w, len(labels), min_size)
    perm = rng.permutation(len(labels))
    return list(np.split(perm, np.cumsum(sizes)[:-1]))


@register_partition("niid2")
def niid2(
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    num_biased: int | None = None,
    classes_per_biased: int | None = None,
) -> list[np.ndarray]:
    """FedDisco NIID-2 (utils.partition_data 'noniid-2'): labels sorted,
    ``shard = floor(N_train / C / N)``. Biased client i (i < num_biased, default
    N−1) gets C/k shards from each of its k = ``classes_per_biased`` (default
    max(1, C//5)) classes {(k·i + j) mod C}; the others one shard of every
    class. So all clients have C·shard samples; samples that fit in no shard are
    left unassigned (as in the official code).

    Deviation from the official slicing (which assumes equal class sizes and
    overlaps when num_biased is not a multiple of 5): shards are taken from
    per-class cursors, biased clients first; if some class is too small for
    its demand the shard size shrinks so that no class runs out."""
    num_classes = _classes(labels)
    nb = n - 1 if num_biased is None else int(num_biased)
    if not 0 <= nb <= n:
        raise ValueError(f"partition.num_biased={num_biased} must be in 0..num_clients={n}")
    k = max(1, num_classes // 5) if classes_per_biased is None else int(classes_per_biased)
    if not 1 <= k <= num_classes:
        raise ValueError(f"partition.classes_per_biased={classes_per_biased} must be in 1..{num_classes}")
    per_class = max(1, num_classes // k)
    # dataset order within class (the official argsort is an unspecified order; shuffle to be unbiased)
    perm = rng.permutation(len(labels))
    by_class = [perm[labels[perm] == c] for c in range(num_classes)]
    biased_classes = [[(k * i + j) % num_classes for j in range(k)] for i in range(nb)]
    demand = np.full(num_classes, n - nb, dtype=np.int64)
    for cl in biased_classes:
        for c in cl:
            demand[c] += per_class
    shard = len(labels) // num_classes // n
    for c in range(num_classes):
        if demand[c] > 0:
            shard = min(shard, len(by_class[c]) // demand[c])
    if shard < 1:
        raise ValueError(
            f"partition 'niid2': classes are too small for {n} clients ({nb} biased); lower num_clients "
            "or partition.num_biased"
        )
    cursor = np.zeros(num_classes, dtype=np.int64)

    def take(c: int, m: int) -> np.ndarray:
        s = cursor[c]
        cursor[c] += m * shard
        return by_class[c][s : s + m * shard]

    out = []
    for i in range(n):
        if i < nb:
            out.append(np.concatenate([take(c, per_class) for c in biased_classes[i]]))
        else:
            out.append(np.concatenate([take(c, 1) for c in range(num_classes)]))
    return out


@register_partition("natural")
def natural(
    labels: np.ndarray, n: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Each sample's own client id (FedProx Synthetic's generating user)."""
    if groups is None:
        raise ValueError(
            "partition.name=natural needs a dataset with natural client ids; use dataset=synthetic, "
            "femnist or shakespeare, or another partition"
        )
    groups = np.asarray(groups)
    num_groups = int(groups.max()) + 1
    if num_groups != n:
        raise ValueError(
            f"partition.name=natural: the dataset has {num_groups} natural clients but num_clients={n}; "
            f"set num_clients={num_groups}, or keep {n} of them with the dataset's own option (dataset.users={n} "
            "on femnist and shakespeare)"
        )
    return [np.flatnonzero(groups == g) for g in range(n)]
