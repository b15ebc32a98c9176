"""Tiny stand-ins for the Hub datasets, with each Hub dataset's exact schema
(column names, image feature of the right mode and size, label feature), saved
with ``save_to_disk`` so that fedagg loads them through ``dataset.path``: for
tests, CI and dry runs of a preset on a machine without the real data::

    python -m fedagg.data.standins DIR      # writes DIR/<name> for every Hub dataset
    fedagg +experiment=bench_cifar10 dataset.path=DIR/cifar10 ...

Images are noise with a bright class-dependent square; Shakespeare lines are
random characters of LEAF's vocabulary. They check plumbing, not accuracy."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .hub import LEAF_VOCAB

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_NAMES = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
DIGITS = [str(i) for i in range(10)]
# name -> (image column, PIL mode, side, {label column: class names}, split names)
IMAGE_SCHEMAS = {
    "mnist": ("image", "L", 28, {"label": DIGITS}, ("train", "test")),
    "fashion_mnist": ("image", "L", 28, {"label": FASHION_NAMES}, ("train", "test")),
    "cifar10": ("img", "RGB", 32, {"label": CIFAR10_NAMES}, ("train", "test")),
    "cifar100": ("img", "RGB", 32, {"fine_label": [f"f{i}" for i in range(100)],
                                    "coarse_label": [f"c{i}" for i in range(20)]}, ("train", "test")),
    "svhn": ("image", "RGB", 32, {"label": DIGITS}, ("train", "test", "extra")),
}
FEMNIST_NAMES = [*DIGITS, *(chr(c) for c in range(65, 91)), *(chr(c) for c in range(97, 123))]  # 0-9 A-Z a-z
FEMNIST_CLASSES = len(FEMNIST_NAMES)  # 62


def _image(r: np.random.Generator, mode: str, side: int, label: int, num_classes: int):
    from PIL import Image

    # a class-dependent bright square on noise, so a model can learn something
    a = r.integers(0, 60, (side, side, 3 if mode == "RGB" else 1), dtype=np.uint8)
    k = label % 16
    row, col = (k // 4) * (side // 4), (k % 4) * (side // 4)
    a[row : row + side // 4, col : col + side // 4] = 255
    return Image.fromarray(a.squeeze(-1) if mode == "L" else a, mode=mode)


def image_dataset(name: str, n: int, seed: int = 0, side: int | None = None):
    """One split of an image stand-in (``side`` overrides the image size)."""
    import datasets as hf

    col, mode, s, labels, _ = IMAGE_SCHEMAS[name]
    side = side or s
    r = np.random.default_rng(seed)
    feats = {col: hf.Image()}
    data: dict[str, list] = {}
    first = next(iter(labels))
    y = r.integers(0, len(labels[first]), n)
    data[col] = [_image(r, mode, side, int(v), len(labels[first])) for v in y]
    for lc, names in labels.items():
        feats[lc] = hf.ClassLabel(names=names)
        data[lc] = [int(v) if lc == first else int(v) % len(names) for v in y]
    return hf.Dataset.from_dict(data, features=hf.Features(feats))


def save_image_standin(name: str, root: Path, n_train: int = 48, n_test: int = 16) -> Path:
    import datasets as hf

    splits = IMAGE_SCHEMAS[name][4]
    dd = hf.DatasetDict({s: image_dataset(name, n_train if s == "train" else n_test, seed=i)
                         for i, s in enumerate(splits)})
    out = root / name
    dd.save_to_disk(str(out))
    return out


def femnist_dataset(writers: int = 4, per_writer: int = 12, seed: int = 0):
    """flwrlabs/femnist's schema: image (L, 28x28), writer_id (string),
    hsf_id (int64), character (ClassLabel, 62); one 'train' split."""
    import datasets as hf

    r = np.random.default_rng(seed)
    rows: dict[str, list] = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for w in range(writers):
        for _ in range(per_writer):
            c = int(r.integers(0, FEMNIST_CLASSES))
            rows["image"].append(_image(r, "L", 28, c, FEMNIST_CLASSES))
            rows["writer_id"].append(f"f{w:04d}_{w % 7:02d}")
            rows["hsf_id"].append(w % 8)
            rows["character"].append(c)
    feats = hf.Features({"image": hf.Image(), "writer_id": hf.Value("string"), "hsf_id": hf.Value("int64"),
                         "character": hf.ClassLabel(names=FEMNIST_NAMES)})
    return hf.Dataset.from_dict(rows, features=feats)


def shakespeare_dataset(roles: int = 3, per_role: int = 10, seed: int = 0):
    """flwrlabs/shakespeare's schema: character_id, x (80 characters), y (the
    next character), all strings; one 'train' split."""
    import datasets as hf

    r = np.random.default_rng(seed)
    rows: dict[str, list] = {"character_id": [], "x": [], "y": []}
    for k in range(roles):
        text = "".join(r.choice(list(LEAF_VOCAB[1:]), size=per_role + 80))
        for i in range(per_role):
            rows["character_id"].append(f"PLAY_{k}_ROLE")
            rows["x"].append(text[i : i + 80])
            rows["y"].append(text[i + 80])
    feats = hf.Features({"character_id": hf.Value("string"), "x": hf.Value("string"), "y": hf.Value("string")})
    return hf.Dataset.from_dict(rows, features=feats)


def save_leaf_standin(name: str, root: Path, **kw: int) -> Path:
    import datasets as hf

    ds = femnist_dataset(**kw) if name == "femnist" else shakespeare_dataset(**kw)
    out = root / name
    hf.DatasetDict({"train": ds}).save_to_disk(str(out))
    return out


def save_standin(name: str, root: Path) -> Path:
    if name in ("femnist", "shakespeare"):
        return save_leaf_standin(name, root)
    return save_image_standin(name, root)


def main() -> None:
    import sys

    from .hub import HUB_DATASETS

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "standins")
    for name in HUB_DATASETS:
        print(save_standin(name, root))


if __name__ == "__main__":
    main()
