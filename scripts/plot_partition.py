#!/usr/bin/env python
"""Draw the per-client label distribution of a partition as a heatmap PNG.

    python scripts/plot_partition.py --dataset mnist1d --partition dirichlet --alpha 0.1 \
        --num-clients 20 --seed 0 --out part.png

Extra partition / dataset / noise options: ``--opt partition.min_size=5 --opt noise.kind=label_flip``.
Counts are those the clients actually hold (after noise, before the val split).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text.lower(), text)


def build_spec(args: argparse.Namespace) -> dict:
    spec = {"seed": args.seed, "num_clients": args.num_clients, "dataset.name": args.dataset,
            "partition.name": args.partition, "val_fraction": 0.0}
    if args.alpha is not None:
        spec["partition.alpha"] = args.alpha
    for item in args.opt:
        if "=" not in item or not item.split("=", 1)[0].startswith(("dataset.", "partition.", "noise.")):
            raise SystemExit(f"--opt {item!r}: expected dataset.KEY=VALUE, partition.KEY=VALUE or noise.KEY=VALUE")
        k, v = item.split("=", 1)
        spec[k] = _value(v)
    return spec


def plot(counts: np.ndarray, title: str, out: Path, percent: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, c = counts.shape
    if percent:
        counts = 100.0 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * n + 2), max(3.0, 0.3 * c + 1.5)))
    im = ax.imshow(counts.T, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    ax.set_xticks(range(n) if n <= 40 else np.linspace(0, n - 1, 10, dtype=int))
    ax.set_yticks(range(c) if c <= 20 else np.linspace(0, c - 1, 10, dtype=int))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="% of the client's samples" if percent else "samples")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--partition", default="dirichlet")
    ap.add_argument("--alpha", type=float, default=None, help="partition.alpha (Dirichlet partitions)")
    ap.add_argument("--num-clients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opt", action="append", default=[], help="extra spec entry, e.g. partition.min_size=5")
    ap.add_argument("--percent", action="store_true", help="colour = share of each client's data")
    ap.add_argument("--out", type=Path, default=Path("partition.png"))
    args = ap.parse_args(argv)

    from fedagg.data.federated import FederatedData

    fd = FederatedData(build_spec(args))
    counts = np.stack([np.bincount(fd.client(i).y_train, minlength=fd.num_classes) for i in range(fd.num_clients)])
    title = f"{args.dataset} / {args.partition}" + (f" α={args.alpha}" if args.alpha is not None else "")
    title += f" / {args.num_clients} clients / seed {args.seed}"
    plot(counts, title, args.out, percent=args.percent)
    print(f"wrote {args.out} ({fd.num_clients} clients x {fd.num_classes} classes, {int(counts.sum())} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
