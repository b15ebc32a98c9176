"""Partitions: each scheme's defining property, determinism and coverage."""
from __future__ import annotations

import numpy as np
import pytest

from fedagg.data.partition import PARTIAL_COVER, available, partition
from fedagg.seeding import rng


def balanced_labels(n_per_class: int = 300, classes: int = 10, seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(classes), n_per_class)
    return rng(seed, "test-labels").permutation(y)


LABELS = balanced_labels()
OPTIONS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "dirichlet_fedau": {"alpha": 0.5},
    "dirichlet_fedlaw": {"alpha": 0.5},
    "shards": {},
    "quantity_skew": {"sigma": 1.0},
    "niid2": {},
    "flwr_dirichlet": {"alpha": 0.5},
    "flwr_pathological": {"classes_per_client": 3},
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_partition_is_disjoint_deterministic_and_covers(name):
    parts = partition(name, LABELS, 10, seed=3, **OPTIONS[name])
    assert len(parts) == 10
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "duplicate index"
    assert allidx.min() >= 0 and allidx.max() < len(LABELS)
    if name not in PARTIAL_COVER:
        assert len(allidx) == len(LABELS), "some samples unassigned"
    assert all(len(p) > 0 and p.dtype == np.int64 for p in parts)
    again = partition(name, LABELS, 10, seed=3, **OPTIONS[name])
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if name != "niid2":  # niid2 is deterministic up to which samples fill a shard
        other = partition(name, LABELS, 10, seed=4, **OPTIONS[name])
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_registry_lists_all():
    assert set(OPTIONS) | {"natural"} <= set(available())


def _hist(parts, labels, classes=10):
    return np.stack([np.bincount(labels[p], minlength=classes) for p in parts])


@pytest.mark.parametrize("name", ["dirichlet", "dirichlet_fedau", "dirichlet_fedlaw"])
def test_dirichlet_large_alpha_is_near_iid(name):
    parts = partition(name, LABELS, 10, seed=0, alpha=1e4)
    d = _hist(parts, LABELS) / np.array([len(p) for p in parts])[:, None]
    assert np.abs(d - 0.1).max() < 0.04
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() / sizes.min() < 1.3


@pytest.mark.parametrize("name", ["dirichlet", "dirichlet_fedau", "dirichlet_fedlaw"])
def test_dirichlet_small_alpha_gives_one_or_two_classes(name):
    labels = balanced_labels(1000)
    opts = {"alpha": 0.05}
    if name == "dirichlet":
        opts["min_size"] = 1
    parts = partition(name, labels, 30, seed=2, **opts)
    h = _hist(parts, labels)
    top2 = np.sort(h / h.sum(1, keepdims=True), 1)[:, -2:].sum(1)  # share of the two largest classes
    assert np.median(top2) > 0.95 and np.mean(top2 >= 0.9) >= 0.7, top2


def test_dirichlet_niid1_min_size_and_bad_alpha():
    parts = partition("dirichlet", LABELS, 20, seed=2, alpha=0.3, min_size=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ValueError, match="partition.alpha"):
        partition("dirichlet", LABELS, 10, alpha=0)
    with pytest.raises(ValueError, match="partition.alpha"):
        partition("dirichlet_fedau", LABELS, 10, alpha=-1)


def test_fedau_contiguous_cumulative_split_matches_reference():
    """Reference: FedAU's loop (np.round of the cumulative share, contiguous
    slices of each class's indices in dataset order)."""
    labels = LABELS
    n, alpha = 7, 0.3
    parts = partition("dirichlet_fedau", labels, n, seed=5, alpha=alpha)
    pi = rng(5, "partition").dirichlet(np.full(10, alpha), n)
    s = pi.sum(0)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        start = 0
        for i in range(n):
            end = int(np.round(len(idx) * np.sum(pi[: i + 1, c]) / s[c]))
            expected = idx[start:end]
            got = parts[i][labels[parts[i]] == c]
            assert np.array_equal(got, expected)
            start = end


def test_fedlaw_last_client_gets_remainder():
    labels = LABELS
    n, alpha = 6, 0.5
    parts = partition("dirichlet_fedlaw", labels, n, seed=8, alpha=alpha)
    r = rng(8, "partition")
    for c in range(10):
        r.shuffle(np.flatnonzero(labels == c))  # replay the stream: shuffles first
    pi = r.dirichlet(np.full(n, alpha), 10).T
    h = _hist(parts, labels)
    counts = np.round(pi * 300).astype(int)
    cum = np.cumsum(counts, 0)
    for c in range(10):
        for i in range(n - 1):
            lo = 0 if i == 0 else min(cum[i - 1, c], 300)
            assert h[i, c] == max(0, min(cum[i, c], 300) - lo)
        assert h[:, c].sum() == 300  # the last client took the rest


def test_shards_exactly_two_per_client_and_no_class_dropped():
    n = 20
    parts = partition("shards", LABELS, n, seed=0, shards_per_client=2)
    perm = None  # replay: shards are contiguous runs of the label-sorted order
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == len(LABELS) and np.all(sizes == len(LABELS) // n)
    h = _hist(parts, LABELS)
    # 3000 samples / 40 shards = 75 per shard, classes of 300 = 4 shards each: a client holds <= 2 classes
    assert np.all((h > 0).sum(1) <= 2)
    assert np.all(h.sum(0) == 300)  # no class dropped
    assert np.all(h % 75 == 0)  # whole shards only
    assert np.all(h.sum(1) // 75 == 2)
    del perm


def test_quantity_skew_sizes():
    parts = partition("quantity_skew", LABELS, 10, seed=0, sigma=1.5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == len(LABELS) and sizes.max() > 3 * sizes.min()
    flat = partition("quantity_skew", LABELS, 10, seed=0, sigma=0.0)
    assert {len(p) for p in flat} == {300}
    with pytest.raises(ValueError, match="partition.sigma"):
        partition("quantity_skew", LABELS, 10, sigma=-1)


def test_niid2_biased_clients_hold_exactly_their_classes():
    parts = partition("niid2", LABELS, 6, seed=0)  # FedDisco: 5 biased + 1 unbiased
    h = _hist(parts, LABELS)
    shard = len(LABELS) // 10 // 6  # 50
    for i in range(5):
        assert set(np.flatnonzero(h[i])) == {(2 * i) % 10, (2 * i + 1) % 10}
        assert h[i, 2 * i] == 5 * shard and h[i, 2 * i + 1] == 5 * shard
    assert np.all(h[5] == shard)  # unbiased: one shard of every class
    assert len(set(len(p) for p in parts)) == 1  # equal sizes


def test_niid2_cifar100_like_and_options():
    labels = balanced_labels(60, 100)
    parts = partition("niid2", labels, 6, seed=0)
    h = _hist(parts, labels, 100)
    for i in range(5):
        assert set(np.flatnonzero(h[i])) == {(20 * i + j) % 100 for j in range(20)}
    assert np.all(h[5] > 0)
    parts = partition("niid2", LABELS, 8, seed=0, num_biased=7)  # not a multiple of 5: still disjoint
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)
    with pytest.raises(ValueError, match="partition.num_biased"):
        partition("niid2", LABELS, 6, num_biased=9)


def test_natural_needs_groups():
    groups = np.repeat(np.arange(5), 10)
    labels = np.zeros(50, dtype=int)
    parts = partition("natural", labels, 5, groups=groups)
    assert all(np.array_equal(p, np.arange(10 * g, 10 * g + 10)) for g, p in enumerate(parts))
    with pytest.raises(ValueError, match="dataset=synthetic"):
        partition("natural", labels, 5)
    with pytest.raises(ValueError, match="num_clients"):
        partition("natural", labels, 4, groups=groups)


def test_unknown_name_and_option():
    with pytest.raises(ValueError, match="partition.name"):
        partition("nope", LABELS, 3)
    with pytest.raises(ValueError, match="partition"):
        partition("iid", LABELS, 3, alpha=0.1)


def test_partition_that_leaves_a_client_empty_names_the_key():
    y = np.repeat(np.arange(10), 20)  # 200 samples, 50 clients, extreme skew
    with pytest.raises(ValueError, match=r"left client\(s\) .* empty; raise partition.alpha"):
        partition("dirichlet_fedlaw", y, 50, seed=0, alpha=0.01)
