"""FederatedData: noisy / OOD clients, natural partition, validation split."""
from __future__ import annotations

import numpy as np
import pytest

from fedagg.data.federated import FederatedData
from fedagg.seeding import rng

BASE = {"seed": 0, "num_clients": 10, "dataset.name": "digits", "partition.name": "iid"}


def _order(fd: FederatedData, cid: int) -> np.ndarray:
    """Dataset indices of client ``cid``'s training samples, in its order (val split = 0)."""
    idx = fd.parts[cid]
    return idx[rng(fd.seed, "val-split", cid).permutation(len(idx))]


def clean_labels(fd: FederatedData, cid: int) -> np.ndarray:
    return fd.data.y_train[_order(fd, cid)]


def clean_x(fd: FederatedData, cid: int) -> np.ndarray:
    return fd.data.x_train[_order(fd, cid)]


def test_label_flip_rate_and_clean_clients_untouched():
    fd = FederatedData({**BASE, "noise.kind": "label_flip", "noise.fraction": 0.3, "noise.rate": 0.4})
    assert len(fd.noisy_clients) == 3
    rates = []
    for cid in range(10):
        c = fd.client(cid)
        if cid in fd.noisy_clients:
            rates.append(np.mean(c.y_train != clean_labels(fd, cid)))
        else:
            assert np.array_equal(c.y_train, clean_labels(fd, cid))
            assert np.array_equal(c.x_train, clean_x(fd, cid))
    assert abs(np.mean(rates) - 0.4) < 0.06, rates
    # the histogram reports the labels the client actually has
    cid = int(fd.noisy_clients[0])
    assert np.array_equal(fd.label_hist(cid), np.bincount(fd.client(cid).y_train, minlength=10))
    assert not np.array_equal(fd.label_hist(cid), np.bincount(clean_labels(fd, cid), minlength=10))


def test_noisy_choice_is_deterministic_and_seeded():
    spec = {**BASE, "noise.kind": "label_flip", "noise.fraction": 0.5, "noise.rate": 0.2}
    a, b = FederatedData(spec), FederatedData(spec)
    assert np.array_equal(a.noisy_clients, b.noisy_clients)
    assert np.array_equal(a.client(int(a.noisy_clients[0])).y_train, b.client(int(a.noisy_clients[0])).y_train)
    others = [tuple(FederatedData({**spec, "seed": s}).noisy_clients) for s in range(1, 4)]
    assert any(o != tuple(a.noisy_clients) for o in others)


def test_label_permute_is_a_fixed_derangement():
    fd = FederatedData({**BASE, "noise.kind": "label_permute", "noise.fraction": 0.2})
    assert np.all(fd._permutation != np.arange(10)) and sorted(fd._permutation) == list(range(10))
    for cid in fd.noisy_clients:
        y = fd.client(int(cid)).y_train
        assert np.array_equal(y, fd._permutation[clean_labels(fd, int(cid))])


def test_gaussian_feature_noise():
    fd = FederatedData({**BASE, "noise.kind": "gaussian", "noise.fraction": 0.1, "noise.std": 0.5})
    cid = int(fd.noisy_clients[0])
    diff = fd.client(cid).x_train - clean_x(fd, cid)
    assert abs(diff.std() - 0.5) < 0.05 and abs(diff.mean()) < 0.05
    assert np.array_equal(fd.client(cid).y_train, clean_labels(fd, cid))


def test_noise_none_and_validation():
    fd = FederatedData({**BASE, "noise.name": "none", "noise.kind": "none", "noise.fraction": 0.0})
    assert len(fd.noisy_clients) == 0
    for key, val in [("noise.fraction", 1.5), ("noise.rate", -0.1), ("noise.std", -1.0), ("noise.kind", "salt")]:
        with pytest.raises(ValueError, match=key):
            FederatedData({**BASE, "noise.kind": "label_flip", key: val})


def test_val_split_and_label_dists():
    fd = FederatedData({**BASE, "val_fraction": 0.2, "partition.name": "dirichlet", "partition.alpha": 0.5})
    c = fd.client(3)
    assert len(c.y_val) == int(round(len(fd.parts[3]) * 0.2))
    assert len(c.y_val) + len(c.y_train) == len(fd.parts[3])
    d = fd.label_dists()
    assert d.shape == (10, 10) and np.allclose(d.sum(1), 1.0)


def test_synthetic_natural_partition():
    spec = {"seed": 0, "num_clients": 8, "dataset.name": "synthetic", "dataset.num_samples": 2000,
            "dataset.num_users": 8, "partition.name": "natural"}
    fd = FederatedData(spec)
    # each user generates its own shard on demand: exactly its slice of the whole pool, and the same test set
    from fedagg.data.datasets import load_dataset

    pool = load_dataset("synthetic", seed=0, num_samples=2000, num_users=8)
    assert fd.parts is None and len(fd.data.x_train) == 0
    from fedagg.seeding import rng

    for k in range(8):
        mine = np.flatnonzero(pool.client_ids == k)
        mine = mine[rng(0, "val-split", k).permutation(len(mine))]  # the (empty) validation split's shuffle
        assert np.array_equal(fd.client(k).x_train, pool.x_train[mine])
        assert np.array_equal(fd.client(k).y_train, pool.y_train[mine])
    assert np.array_equal(fd.data.x_test, pool.x_test) and np.array_equal(fd.data.y_test, pool.y_test)
    with pytest.raises(ValueError, match="num_clients"):
        FederatedData({**spec, "num_clients": 5})
    with pytest.raises(ValueError, match="dataset=synthetic"):
        FederatedData({**BASE, "partition.name": "natural"})


def test_plot_partition_script(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "plot_partition.py"
    spec = importlib.util.spec_from_file_location("plot_partition", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "part.png"
    assert mod.main(["--dataset", "digits", "--partition", "dirichlet", "--alpha", "0.1", "--num-clients", "8",
                     "--seed", "0", "--opt", "partition.min_size=2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
