"""Per-run outputs: metrics.csv (one row per round), rounds.jsonl (who was
asked, who replied, why others failed, aggregation weights) and the
accuracy plot. Each round appends one line to each file (constant work per
round); the files are rewritten whole, atomically, only when the metric
columns change or a resume loads earlier rounds."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BASE_COLUMNS = [
    "round", "clients_asked", "clients_replied", "clients_failed", "clients_rejected",
    "train_loss", "test_accuracy", "test_loss", "round_seconds",
]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Recorder:
    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.details: list[dict[str, Any]] = []
        self._columns: list[str] | None = None  # metrics.csv's header as written; None = rewrite

    def add(self, rec: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "round": rec.round,
            "clients_asked": len(rec.asked),
            "clients_replied": len(rec.replied),
            "clients_failed": len(rec.failed),
            "clients_rejected": len(rec.rejected),
            "train_loss": rec.train_loss,
            "test_accuracy": rec.test_accuracy,
            "test_loss": rec.test_loss,
            "round_seconds": round(rec.seconds, 4),
        }
        for k, v in (getattr(rec, "client_eval", None) or {}).items():  # client-side evaluation, when enabled
            row[f"client_eval_{k}"] = v
        lists: dict[str, Any] = {}
        for k, v in rec.agg_metrics.items():
            if isinstance(v, (list, tuple, dict)) or hasattr(v, "shape"):
                lists[k] = v.tolist() if hasattr(v, "tolist") else v
            else:
                row[k] = v
        self.rows.append(row)
        self.details.append({
            "round": rec.round, "asked": rec.asked, "replied": rec.replied,
            "failed": {str(k): v for k, v in rec.failed.items()},
            "rejected": {str(k): v for k, v in rec.rejected.items()},
            **lists,
        })
        if self._columns is None or any(k not in self._columns for k in row):
            self.flush()
        else:  # the usual round: append one line to each file
            with open(self.out / "metrics.csv", "a") as f:
                f.write(self._csv(self._columns, [row], header=False))
            with open(self.out / "rounds.jsonl", "a") as f:
                f.write(json.dumps(self.details[-1], default=float) + "\n")
        return row

    def load(self, rows: list[dict[str, Any]], details: list[dict[str, Any]]) -> None:
        self.rows, self.details = list(rows), list(details)
        self._columns = None  # the next add() rewrites both files from these

    @staticmethod
    def _csv(cols: list[str], rows: list[dict[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        if header:
            w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
        return buf.getvalue()

    def flush(self) -> None:
        """Rewrite both files whole (atomically) from the rows and details so far."""
        cols = list(BASE_COLUMNS)
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        atomic_write_text(self.out / "metrics.csv", self._csv(cols, self.rows, header=True))
        atomic_write_text(self.out / "rounds.jsonl", "".join(json.dumps(d, default=float) + "\n" for d in self.details))
        self._columns = cols

    def plot(self, title: str = "") -> Path | None:
        """accuracy.png (see :func:`accuracy_figure`); None before any scored round."""
        fig = accuracy_figure(self.rows, title)
        if fig is None:
            return None
        import matplotlib.pyplot as plt

        path = self.out / "accuracy.png"
        fig.savefig(path, bbox_inches="tight")  # the legend right of the axes is part of the image
        plt.close(fig)
        return path


NODE_LINES = {"node_accuracy_mean": "nodes' own models: mean", "node_accuracy_worst": "nodes' own models: worst"}


def accuracy_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Any:
    """Test accuracy per round of one run. For rules with one model per node
    (gossip: ``node_accuracy_mean`` / ``node_accuracy_worst`` in the rows)
    the nodes' own accuracies are drawn too, next to the mean model's, with
    a legend right of the axes. None when no round has a test accuracy."""
    rows = [r for r in rows if r.get("test_accuracy") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    nodes = [c for c in NODE_LINES if any(r.get(c) is not None for r in rows)]
    ax.plot([r["round"] for r in rows], [r["test_accuracy"] for r in rows], marker=".",
            label="mean model (average of the nodes)" if nodes else "global model")
    for c in nodes:
        pts = [(r["round"], r[c]) for r in rows if r.get(c) is not None]
        ax.plot(*zip(*pts), marker=".", linestyle="--" if c.endswith("worst") else "-", label=NODE_LINES[c])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if nodes:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    return fig


def run_title(aggregator: dict[str, Any], dataset: str, partition: str, seed: int) -> str:
    """The title of a run's plot: the rule (with its graph and variance
    correction, for gossip), the data and partition, the seed."""
    opts = []
    if "topology" in aggregator:
        topo = str(aggregator["topology"])
        extra = {"k_regular": f", degree {aggregator.get('degree')}", "erdos_renyi": f", p {aggregator.get('p')}"}
        opts.append(f"topology {topo}{extra.get(topo, '')}")
    if "variance_correction" in aggregator:
        opts.append("variance correction " + ("on" if aggregator["variance_correction"] else "off"))
    head = f"{aggregator['name']} ({'; '.join(opts)})" if opts else str(aggregator["name"])
    return f"{head}\non {dataset} ({partition}), seed {seed}"


def distribution(accuracies: Sequence[float], prefix: str = "client_acc") -> dict[str, float]:
    """mean, std (population), worst 10 % and best 10 % (means of the
    ceil(10 %) lowest / highest scores) of per-client accuracies."""
    a = np.sort(np.asarray(accuracies, dtype=np.float64))
    if a.size == 0:
        return {}
    k = max(1, math.ceil(0.1 * a.size))
    return {
        f"{prefix}_mean": float(a.mean()),
        f"{prefix}_std": float(a.std()),
        f"{prefix}_worst10": float(a[:k].mean()),
        f"{prefix}_best10": float(a[-k:].mean()),
    }
