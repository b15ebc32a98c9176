"""Datasets behind one interface. Each loader returns a :class:`Dataset` of
numpy arrays; the offline ones are generated or shipped, never downloaded."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def cache_dir() -> Path:
    """Where generated datasets are cached: $FEDAGG_CACHE or ~/.cache/fedagg."""
    d = Path(os.environ.get("FEDAGG_CACHE", Path.home() / ".cache" / "fedagg"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, seed: int = 0, **options: Any) -> Dataset:
    if name not in _LOADERS:
        raise ValueError(f"dataset.name='{name}' is not known; valid choices: {', '.join(available())}")
    return _LOADERS[name](seed=seed, **options)


@register_dataset("mnist1d")
def mnist1d(seed: int = 0, num_samples: int = 12000, train_split: float = 0.8) -> Dataset:
    """MNIST-1D generated procedurally by ``mnist1d.data.make_dataset``
    (Greydanus, 2020): 10 classes, length-40 signals. No download."""
    key = f"mnist1d-n{int(num_samples)}-s{float(train_split)}-seed{int(seed)}.npz"
    path = cache_dir() / key
    if path.exists():
        d = dict(np.load(path))
    else:  # generation takes ~1 ms per sample: do it once, then reuse
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = int(num_samples)
        args.train_split = float(train_split)
        args.seed = int(seed)
        g = make_dataset(args)
        d = {k: np.asarray(g[k]) for k in ("x", "y", "x_test", "y_test")}
        atomic_save_npz(path, d)
    return Dataset(
        "mnist1d",
        np.asarray(d["x"], dtype=np.float32),
        np.asarray(d["y"], dtype=np.int64),
        np.asarray(d["x_test"], dtype=np.float32),
        np.asarray(d["y_test"], dtype=np.int64),
        10,
    )


@register_dataset("digits")
def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with sklearn)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10)
