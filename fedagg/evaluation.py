"""Per-client evaluation and ``fedagg-eval <run dir>``.

Each client's score is the global model's accuracy on that client's held-out
split (``val_fraction`` of its shard); the spread of those scores across
clients is the fairness view papers report: mean, std, the mean of the worst
10 % of clients and of the best 10 % (at least one client each).

``fedagg-eval RUN_DIR`` rebuilds the run's data from its saved config.yaml,
loads its model.pt and prints the test-set score and the per-client
distribution; ``--json`` prints everything (per-client rows included) as one
JSON object. With ``val_fraction=0`` clients hold no held-out data, so the
per-client scores are on each client's training shard, and the output says so.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .report.metrics import distribution
from .task.train import evaluate

__all__ = ["client_scores", "distribution", "evaluate_run", "main"]


def client_scores(model: torch.nn.Module, fd: Any, num_clients: int) -> tuple[list[dict[str, Any]], str]:
    """(rows, split): per client ``{client, examples, loss, accuracy}`` on its
    held-out split, or on its training shard when there is none."""
    rows: list[dict[str, Any]] = []
    split = "val"
    datas = [fd.client(c) for c in range(num_clients)]
    if all(len(d.y_val) == 0 for d in datas):
        split = "train"
    for c, d in enumerate(datas):
        x, y = (d.x_val, d.y_val) if split == "val" else (d.x_train, d.y_train)
        if len(y) == 0:
            rows.append({"client": c, "examples": 0, "loss": None, "accuracy": None})
            continue
        loss, acc = evaluate(model, x, y)
        rows.append({"client": c, "examples": len(y), "loss": float(loss), "accuracy": float(acc)})
    return rows, split


def evaluate_run(run_dir: Path) -> dict[str, Any]:
    import yaml

    from .experiment import build

    run_dir = Path(run_dir)
    for need in ("config.yaml", "model.pt"):
        if not (run_dir / need).is_file():
            raise FileNotFoundError(f"{run_dir / need} not found: fedagg-eval needs a finished run folder")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["resume"] = None
    exp = build(cfg)
    model = exp.model()
    try:
        model.load_state_dict(torch.load(run_dir / "model.pt"))
    except Exception as e:  # noqa: BLE001 - a truncated / foreign file, or another model's weights
        what = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ValueError(f"{run_dir / 'model.pt'} is not a readable model of this run's config.yaml "
                         f"({type(e).__name__}: {what})") from None
    test_loss, test_acc = evaluate(model, exp.x_test, exp.y_test)
    rows, split = client_scores(model, exp.fd, exp.cfg.num_clients)
    accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    return {"run": str(run_dir), "test_accuracy": test_acc, "test_loss": test_loss, "client_split": split,
            **distribution(accs), "clients": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedagg-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder holding config.yaml and model.pt")
    ap.add_argument("--json", action="store_true", help="print one JSON object (per-client rows included)")
    a = ap.parse_args(argv)
    try:
        res = evaluate_run(Path(a.run))
    except (FileNotFoundError, ValueError) as e:
        print(f"fedagg-eval: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{res['run']}: test accuracy {res['test_accuracy']:.4f}, test loss {res['test_loss']:.4f}")
    print(f"per client ({len(res['clients'])} clients, on each client's {res['client_split']} split): "
          f"mean {res['client_acc_mean']:.4f}, std {res['client_acc_std']:.4f}, "
          f"worst 10% {res['client_acc_worst10']:.4f}, best 10% {res['client_acc_best10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
