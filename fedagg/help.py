"""``fedagg --help`` and ``fedagg --version``: fedagg's own, not Hydra's.

The help lists every config group with its choices (the YAML files of that
group, read from the config dir, so a new file shows up by itself) and one
example each, then the most used plain keys and where results go.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

GROUPS: dict[str, tuple[str, str]] = {
    # group: (what it picks, one example)
    "aggregator": ("the aggregation rule", "fedagg aggregator=feddisco"),
    "dataset": ("the data", "fedagg dataset=digits"),
    "partition": ("how the data is split across clients", "fedagg partition=dirichlet partition.alpha=0.1"),
    "noise": ("noisy / out-of-distribution clients", "fedagg noise=label_flip noise.fraction=0.2"),
    "model": ("the network", "fedagg model=mlp"),
    "participation": ("who is available each round", "fedagg participation=bernoulli participation.p_bar=0.3"),
    "heterogeneity": ("compute heterogeneity and faults", "fedagg heterogeneity=stragglers"),
    "device_profile": ("each client's step time, links and latency: the virtual clock",
                       "fedagg device_profile=lognormal server.deadline_s=5"),
    "runtime": ("how clients run", "fedagg runtime=inprocess"),
    "logger": ("extra metric sinks", "fedagg logger=tensorboard"),
    "experiment": ("named presets (add with +)", "fedagg -m +experiment=compare_participation"),
}

KEYS = """\
plain keys (fedagg key=value):
  num_clients=20 rounds=30 seed=0 device=cpu val_fraction=0.0
  train.lr=0.05 train.epochs=2 train.optimizer=sgd|adam train.lr_decay=0.99 train.momentum=0.9
  server.round_timeout=null server.max_failed_rounds=3 checkpoint.every=0 eval.every=0
  server.deadline_s=null server.deadline_mode=drop|partial   simulated round deadline (needs a device_profile)
  resume=<run dir>              continue a run from its checkpoint, with its saved config
"""


def version() -> str:
    try:
        return metadata.version("fedagg")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "unknown (not installed)"


def choices(conf_dir: str | Path, group: str) -> list[str]:
    d = Path(conf_dir) / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def help_text(conf_dir: str | Path) -> str:
    lines = [
        f"fedagg {version()}: federated-learning aggregation simulator (Flower + Ray + Hydra + PyTorch)",
        "",
        "usage: fedagg [group=choice ...] [key=value ...]      one run",
        "       fedagg -m key=a,b [group=c,d ...]               a sweep (one job per combination)",
        "       fedagg --cfg job [overrides]                    print the composed config",
        "       fedagg --version | --help | --hydra-help",
        "",
        "config groups:",
    ]
    for group, (what, example) in GROUPS.items():
        names = choices(conf_dir, group)
        lines.append(f"  {group}: {what}")
        lines.append(f"      choices: {', '.join(names) if names else '(none)'}")
        lines.append(f"      e.g.     {example}")
    lines += ["", KEYS, "results: outputs/<date>/<time>_<overrides>/ (metrics.csv, rounds.jsonl, model.pt, status.json);",
              "         fedagg-report <sweep dir> summarises a sweep, fedagg-eval <run dir> scores a saved model."]
    return "\n".join(lines)
