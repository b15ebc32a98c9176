"""Hugging Face Hub and LEAF federations through flwr-datasets.

One code path for every source: the Hub (``datasets.load_dataset``, the
loader flwr-datasets' ``FederatedDataset`` wraps; needs network once, then the
HF cache) or, for air-gapped machines, ``dataset.path=<dir>``: a copy saved
with ``save_to_disk`` (a ``DatasetDict`` or a single ``Dataset``) or a folder of
parquet / csv files (``train*.parquet``, ``test*.parquet``, or any files = one
train split). The rows are checked against the Hub dataset's schema (columns,
image size), converted to arrays once, and cached in ``$FEDAGG_CACHE``.

========== ============================== ============ ============= =====================
name       hub id                         input        label         natural client id
========== ============================== ============ ============= =====================
mnist      ylecun/mnist                   image L 28²  label (10)
fashion_.. zalando-datasets/fashion_mnist image L 28²  label (10)
cifar10    uoft-cs/cifar10                img RGB 32²  label (10)
cifar100   uoft-cs/cifar100               img RGB 32²  fine_label
                                                       (100)
svhn       ufldl-stanford/svhn            image RGB 32² label (10)
           (config cropped_digits)
femnist    flwrlabs/femnist (LEAF)        image L 28²  character (62) writer_id
shakespeare flwrlabs/shakespeare (LEAF)   x: 80 chars  y: next char   character_id
                                                       (80)
========== ============================== ============ ============= =====================

Images become (N, C, H, W) float32 in [0, 1]. Shakespeare's text becomes
integer ids over LEAF's 80-character vocabulary (``LEAF_VOCAB``; a character
outside it maps to the id of the space, as LEAF's lookup has no unknown id).
femnist and shakespeare ship one split: each natural client's samples are
split train/test by ``test_fraction`` (LEAF's sample-wise split, default 0.1),
seeded from the stream ``(seed, "leaf-split", client)``; the natural ids become
``Dataset.client_ids`` through flwr-datasets' ``NaturalIdPartitioner`` (client
k = the k-th natural id in sorted order), for ``partition=natural``.
``users=k`` keeps k natural clients drawn from the stream ``(seed, "leaf-users")``.
"""
from __future__ import annotations

import os
import socket
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import numpy as np
from annotated_types import Ge

from ..seeding import rng as named_rng
from .datasets import Dataset, Fraction, atomic_save_npz, cache_dir, register_dataset

LEAF_VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80


@dataclass(frozen=True)
class HubSpec:
    hub_id: str
    config: str | None
    feature: str  # image column, or the text column
    label: str
    num_classes: int
    image: tuple[str, int, int] | None  # (PIL mode, height, width); None = text
    natural_id: str | None = None  # column holding the natural client id


HUB_DATASETS: dict[str, HubSpec] = {
    "mnist": HubSpec("ylecun/mnist", None, "image", "label", 10, ("L", 28, 28)),
    "fashion_mnist": HubSpec("zalando-datasets/fashion_mnist", None, "image", "label", 10, ("L", 28, 28)),
    "cifar10": HubSpec("uoft-cs/cifar10", None, "img", "label", 10, ("RGB", 32, 32)),
    "cifar100": HubSpec("uoft-cs/cifar100", None, "img", "fine_label", 100, ("RGB", 32, 32)),
    "svhn": HubSpec("ufldl-stanford/svhn", "cropped_digits", "image", "label", 10, ("RGB", 32, 32)),
    "femnist": HubSpec("flwrlabs/femnist", None, "image", "character", 62, ("L", 28, 28), natural_id="writer_id"),
    "shakespeare": HubSpec("flwrlabs/shakespeare", None, "x", "y", len(LEAF_VOCAB), None, natural_id="character_id"),
}


def _truthy(v: str | None) -> bool:
    return str(v or "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the Hub endpoint
    cannot be reached within ``timeout`` seconds (so an offline machine fails in
    seconds instead of ~25 s of retries)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("HF_DATASETS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(name: str, spec: HubSpec, reason: str) -> str:
    cfg = f", '{spec.config}'" if spec.config else ""
    return (
        f"dataset={name} needs the Hugging Face dataset '{spec.hub_id}'{cfg} ({reason}); on a machine with network "
        f"run python -c \"import datasets; datasets.load_dataset('{spec.hub_id}'{cfg}).save_to_disk('DIR')\", "
        f"copy DIR here and add dataset.path=DIR (parquet files work too)"
    )


# --------------------------------------------------------------------------- opening a source
def _open_hub(name: str, spec: HubSpec) -> Any:
    import datasets as hf

    online = hub_reachable()
    with ExitStack() as stack:
        if not online:  # the env var is read at import time: force offline mode for this call
            import huggingface_hub.constants as hf_constants

            mods: tuple[Any, ...] = (hf.config, hf_constants)
            for mod in mods:
                old = mod.HF_HUB_OFFLINE
                mod.HF_HUB_OFFLINE = True
                stack.callback(setattr, mod, "HF_HUB_OFFLINE", old)
        try:
            return hf.load_dataset(spec.hub_id, spec.config)
        except Exception as e:  # every failure here means "data not available"
            reason = "offline: the Hub is unreachable or HF_HUB_OFFLINE is set" if not online else str(e)[:200]
            raise ValueError(offline_message(name, spec, reason)) from e


def _open_path(name: str, path: str) -> Any:
    """A ``DatasetDict`` from a save_to_disk folder or parquet / csv files."""
    import datasets as hf

    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise ValueError(f"dataset.path={p} does not exist (dataset={name}); point it at a save_to_disk folder or parquet files")
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        loaded = hf.load_from_disk(str(p))
        return loaded if isinstance(loaded, hf.DatasetDict) else hf.DatasetDict({"train": loaded})
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    files = [f for f in files if f.suffix.lower() in (".parquet", ".csv")]
    if not files:
        raise ValueError(
            f"dataset.path={p} holds no save_to_disk copy (dataset_dict.json / state.json) and no .parquet or .csv files"
        )
    kinds = {f.suffix.lower() for f in files}
    if len(kinds) > 1:
        raise ValueError(f"dataset.path={p} mixes parquet and csv files; keep one format")
    split_files: dict[str, list[str]] = {}
    for f in files:
        split = "test" if "test" in f.relative_to(p if p.is_dir() else p.parent).as_posix().lower() else "train"
        split_files.setdefault(split, []).append(str(f))
    fmt = "parquet" if ".parquet" in kinds else "csv"
    return hf.load_dataset(fmt, data_files=split_files, cache_dir=str(cache_dir() / "hf-files"))


# --------------------------------------------------------------------------- checking and converting
def _check_columns(name: str, spec: HubSpec, ds: Any, where: str) -> None:
    need = [spec.feature, spec.label] + ([spec.natural_id] if spec.natural_id else [])
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {', '.join(missing)} that dataset={name} ('{spec.hub_id}') has; "
            f"expected {', '.join(need)}, found {', '.join(ds.column_names)}"
        )


def _images(name: str, spec: HubSpec, col: Any, where: str) -> np.ndarray:
    assert spec.image is not None
    mode, h, w = spec.image
    out = np.empty((len(col), h, w, 3 if mode == "RGB" else 1), dtype=np.uint8)
    for i, im in enumerate(col):
        if not hasattr(im, "size"):
            raise ValueError(f"{where}: column '{spec.feature}' holds {type(im).__name__}, not images (dataset={name})")
        if im.size != (w, h):
            raise ValueError(
                f"{where}: image {i} of column '{spec.feature}' is {im.size[0]}x{im.size[1]}; dataset={name} needs {w}x{h}"
            )
        out[i] = np.asarray(im.convert(mode)).reshape(h, w, -1)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def encode_text(texts: Any, length: int) -> np.ndarray:
    """LEAF's character ids (index in ``LEAF_VOCAB``; unknown → space), (N, length) uint8."""
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if len(t) != length), None)
    if bad is not None:
        raise ValueError(f"text {bad} has {len(texts[bad])} characters; expected {length}")
    table = np.full(0x110000, LEAF_VOCAB.index(" "), dtype=np.uint8)
    table[[ord(ch) for ch in LEAF_VOCAB]] = np.arange(len(LEAF_VOCAB), dtype=np.uint8)
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    return table[codes].reshape(len(texts), length)


def _arrays(name: str, spec: HubSpec, ds: Any, where: str) -> dict[str, np.ndarray]:
    _check_columns(name, spec, ds, where)
    if spec.image is not None:
        x = _images(name, spec, ds[spec.feature], where)
        y = np.asarray(ds[spec.label], dtype=np.int64)
    else:
        try:
            x = encode_text(ds[spec.feature], SEQ_LEN)
        except ValueError as e:
            raise ValueError(f"{where}: column '{spec.feature}': {e} (dataset={name})") from e
        y_text = ds[spec.label]
        if any(len(t) != 1 for t in y_text):
            raise ValueError(f"{where}: column '{spec.label}' must hold single characters (dataset={name})")
        y = encode_text(y_text, 1)[:, 0].astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
        raise ValueError(f"{where}: labels in '{spec.label}' must lie in 0..{spec.num_classes - 1} (dataset={name})")
    out = {"x": x, "y": y}
    if spec.natural_id:
        out["ids"] = _natural_ids(ds, spec.natural_id)
    return out


def _natural_ids(ds: Any, column: str) -> np.ndarray:
    """Client id of every row: flwr-datasets' NaturalIdPartitioner numbering
    (partition k = the k-th natural id in sorted order)."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    part = NaturalIdPartitioner(partition_by=column)
    part.dataset = ds
    _ = part.num_partitions  # builds the id maps
    lookup = {v: k for k, v in part.partition_id_to_natural_id.items()}
    return np.fromiter((lookup[v] for v in ds[column]), dtype=np.int64, count=len(ds))


def _source_tag(path: str | None) -> str:
    """'' for the Hub; for a dataset.path, a hash of its resolved location, file sizes and
    modification times, so every process (each Ray worker) converts a copy once and an edited copy again."""
    if path is None:
        return ""
    import hashlib

    p = Path(os.path.expanduser(path)).resolve()
    if not p.exists():
        return "-missing"
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    stamp = "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return "-" + hashlib.sha256(f"{p}|{stamp}".encode()).hexdigest()[:16]


def _raw(name: str, spec: HubSpec, path: str | None) -> dict[str, np.ndarray]:
    """Arrays of every split (x_train, y_train[, ids_train][, x_test, y_test])."""
    cached = cache_dir() / f"hub-{name}{_source_tag(path)}-u8.npz"  # uint8 pixels / token ids
    if cached.exists():
        with np.load(cached) as z:
            return dict(z)
    import datasets as hf

    hf.disable_progress_bars()
    dd = _open_path(name, path) if path is not None else _open_hub(name, spec)
    where = f"dataset.path={path}" if path is not None else f"'{spec.hub_id}'"
    if "train" not in dd:
        raise ValueError(f"{where} has no 'train' split (has {', '.join(dd)}); dataset={name} needs one")
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        if split in dd:
            for k, v in _arrays(name, spec, dd[split], f"{where} [{split}]").items():
                out[f"{k}_{split}"] = v
    if spec.natural_id is None and "x_test" not in out:
        raise ValueError(f"{where} has no 'test' split; dataset={name} needs train and test")
    atomic_save_npz(cached, out)
    return out


def _leaf_split(
    raw: dict[str, np.ndarray], seed: int, test_fraction: float, users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pool every split, keep ``users`` natural clients (0 = all), split each
    client's samples train/test, renumber clients 0..K-1."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"dataset.test_fraction={test_fraction} must be in (0, 1)")
    x, y, ids = raw["x_train"], raw["y_train"], raw["ids_train"]
    if "x_test" in raw:  # a copy that already has a test split: its clients are the same people
        x, y = np.concatenate([x, raw["x_test"]]), np.concatenate([y, raw["y_test"]])
        ids = np.concatenate([ids, raw["ids_test"]])
    clients = np.unique(ids)
    users = int(users)
    if users < 0 or users > len(clients):
        raise ValueError(f"dataset.users={users} must be in 0..{len(clients)} (the natural clients in the data)")
    if users:
        clients = np.sort(named_rng(seed, "leaf-users").choice(clients, size=users, replace=False))
    tr, te, new_ids = [], [], []
    for k, c in enumerate(clients):
        rows = np.flatnonzero(ids == c)
        perm = named_rng(seed, "leaf-split", int(c)).permutation(rows)
        n_test = round(len(rows) * float(test_fraction)) if len(rows) > 1 else 0
        n_test = min(n_test, len(rows) - 1)
        te.append(perm[:n_test])
        tr.append(np.sort(perm[n_test:]))
        new_ids.append(np.full(len(rows) - n_test, k))
    tr_idx, te_idx = np.concatenate(tr), np.concatenate(te)
    return x[tr_idx], y[tr_idx], x[te_idx], y[te_idx], np.concatenate(new_ids)


def load_hub(
    name: str, seed: int = 0, path: str | None = None, test_fraction: float = 0.1, users: int = 0
) -> Dataset:
    spec = HUB_DATASETS[name]
    raw = _raw(name, spec, str(path) if path else None)
    to_float = (lambda a: a.astype(np.float32) / 255.0) if spec.image is not None else (lambda a: a)
    kind = "image" if spec.image is not None else "tokens"
    if spec.natural_id is None:
        return Dataset(
            name, to_float(raw["x_train"]), raw["y_train"], to_float(raw["x_test"]), raw["y_test"],
            spec.num_classes, kind=kind,
        )
    x_tr, y_tr, x_te, y_te, ids = _leaf_split(raw, seed, test_fraction, users)
    return Dataset(name, to_float(x_tr), y_tr, to_float(x_te), y_te, spec.num_classes, client_ids=ids, kind=kind)


def _register(name: str) -> None:
    spec = HUB_DATASETS[name]
    if spec.natural_id is None:

        def loader(seed: int = 0, path: str | None = None) -> Dataset:
            return load_hub(name, seed=seed, path=path)

    else:

        def loader(  # type: ignore[misc]
            seed: int = 0, path: str | None = None, test_fraction: Fraction = 0.1, users: Annotated[int, Ge(0)] = 0
        ) -> Dataset:
            return load_hub(name, seed=seed, path=path, test_fraction=test_fraction, users=users)

    loader.__doc__ = (
        f"{name}: '{spec.hub_id}' through flwr-datasets (network once), or dataset.path=<save_to_disk dir | parquet>."
    )
    register_dataset(name)(loader)


for _name in HUB_DATASETS:
    _register(_name)
