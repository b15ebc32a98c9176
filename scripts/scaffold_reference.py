#!/usr/bin/env python
"""SCAFFOLD as NIID-Bench and FedDisco write it, run end to end on a fedagg experiment's own clients.

Written from NIID-Bench's ``train_net_scaffold`` / ``local_train_net_scaffold`` (Xtra-Computing/NIID-Bench,
``experiments.py`` @ 90cc8de) and FedDisco's copy (MediaBrain-SJTU/FedDisco ``algorithms/client.py`` @ 48288a1),
independently of fedagg's training code (fedagg gives only the data, the model and the initial weights):

* client i, from the global model x, with SGD (lr, momentum, weight decay): after each optimiser step
  ``p <- p - lr * (c - c_i)``; after K steps ``c_i+ = c_i - c + (x - y_i) / (K lr)``;
* server: ``x <- sum_i (n_i / sum n) y_i`` and ``c <- c + mean_i (c_i+ - c_i)`` (every client every round);
* ``--rule fedavg`` is the same loop without the corrections.

The minibatches are fedagg's (``torch_generator(seed, "shuffle", round, client)``, a new permutation each
epoch), so the run can be held against ``fedagg aggregator=scaffold aggregator.weighted=true
aggregator.c_update=mean participation=full`` (``tests/test_compare_drift.py`` does, on digits). Usage::

    python scripts/scaffold_reference.py +experiment=compare_drift seed=4 heterogeneity.min=2 heterogeneity.max=2 \\
        --rounds 15 --rule scaffold

prints the global model's test accuracy and loss after every round.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn as nn

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fedagg.config import compose  # noqa: E402
from fedagg.experiment import Experiment, build  # noqa: E402
from fedagg.seeding import torch_generator  # noqa: E402
from fedagg.task.train import evaluate, get_params, set_params  # noqa: E402

Params = dict[str, np.ndarray]


def reference_run(exp: Experiment, rounds: int, scaffold: bool = True) -> tuple[Params, list[tuple[float, float]]]:
    """The global model after ``rounds`` rounds and (test accuracy, test loss) after each."""
    cfg, tr = exp.cfg, exp.cfg.train
    net = exp.model()
    glob = exp.init_params(0)
    names = [n for n, _ in net.named_parameters()]
    c = {k: np.zeros_like(glob[k]) for k in names}
    c_i = {i: {k: np.zeros_like(glob[k]) for k in names} for i in range(cfg.num_clients)}
    scores = []
    for rnd in range(1, rounds + 1):
        models, deltas, sizes = [], [], []
        for i in range(cfg.num_clients):
            d = exp.fd.client(i)
            x, y = torch.as_tensor(d.x_train, dtype=torch.float32), torch.as_tensor(d.y_train, dtype=torch.long)
            set_params(net, glob)
            opt = torch.optim.SGD(net.parameters(), lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
            corr = {k: torch.as_tensor(tr.lr * (c[k] - c_i[i][k])) for k in names}
            gen = torch_generator(cfg.seed, "shuffle", rnd, i)
            cnt = 0
            for _ in range(int(tr.epochs)):
                perm = torch.randperm(len(y), generator=gen)
                for s in range(0, len(y), tr.batch_size):
                    idx = perm[s : s + tr.batch_size]
                    opt.zero_grad()
                    nn.CrossEntropyLoss()(net(x[idx]), y[idx]).backward()
                    opt.step()
                    if scaffold:
                        with torch.no_grad():
                            for n, p in net.named_parameters():
                                p.sub_(corr[n])
                    cnt += 1
            y_i = get_params(net)
            if scaffold:
                new = {k: c_i[i][k] - c[k] + (glob[k] - y_i[k]) / (cnt * tr.lr) for k in names}
                deltas.append({k: new[k] - c_i[i][k] for k in names})
                c_i[i] = new
            models.append(y_i)
            sizes.append(len(y))
        w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
        glob = {k: sum(wi * m[k].astype(np.float64) for wi, m in zip(w, models)).astype(glob[k].dtype) for k in glob}
        if scaffold:
            c = {k: c[k] + sum(dl[k] for dl in deltas) / len(deltas) for k in names}
        set_params(net, glob)
        loss, acc = evaluate(net, exp.x_test, exp.y_test)
        scores.append((acc, loss))
    return glob, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="fedagg config overrides (the experiment whose clients to use)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rule", choices=["scaffold", "fedavg"], default="scaffold")
    a = ap.parse_args()
    torch.set_num_threads(1)
    exp = build(compose(a.overrides))
    _, scores = reference_run(exp, a.rounds, scaffold=a.rule == "scaffold")
    for rnd, (acc, loss) in enumerate(scores, 1):
        print(f"{a.rule} round {rnd}: test_acc {acc:.4f} test_loss {loss:.4f}")


if __name__ == "__main__":
    main()
