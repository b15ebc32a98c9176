"""``fedagg --help`` and ``fedagg --version``: fedagg's own, not Hydra's.

The help lists every config group with its choices (the YAML files of that
group, read from the config dir, so a new file shows up by itself) and one
example each, then the most used plain keys and where results go.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

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

# the plain keys --help shows, a line each; their defaults are read from the typed schema (fedagg.config)
KEYS: tuple[tuple[str, ...], ...] = (
    ("num_clients", "rounds", "seed", "device", "val_fraction"),
    ("train.lr", "train.epochs", "train.optimizer", "train.lr_decay", "train.momentum"),
    ("server.round_timeout", "server.max_failed_rounds", "checkpoint.every", "eval.every"),
    ("server.deadline_s", "server.deadline_mode"),
    ("runtime.state_memory_mb", "runtime.state_spill"),
    ("server.mode", "server.concurrency", "server.buffer_size", "server.window_s", "server.alpha"),
)


def default(key: str) -> Any:
    """The schema's one default of a plain key (``train.lr``)."""
    from .config import Config

    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def show(value: Any) -> str:
    """A value as an override writes it (null, true, 0.05)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def keys_text() -> str:
    from .task.train import OPTIMIZERS

    lines = ["plain keys (fedagg key=value; the defaults shown):"]
    for row in KEYS:
        lines.append("  " + " ".join(f"{k}={show(default(k))}" for k in row))
    lines.append(f"  (train.optimizer: {' | '.join(OPTIMIZERS)}; train.lr_decay below 1 decays the lr every train.lr_decay_every rounds)")
    lines.append("  (server.deadline_s: the simulated round deadline, needs a device_profile; "
                 "server.deadline_mode: drop | partial)")
    lines.append("  (server.mode: sync | fedasync | fedbuff | fedfix -- asynchronous server updates on the virtual clock, "
                 "rounds = server updates; see docs/algorithms.md)")
    lines.append("  (aggregator.disco: true puts FedDisco's weights on fedavg, fednova, scaffold, fedavg_m, feddyn or moon; docs/algorithms.md, section 10)")
    lines.append("  (aggregator moon, MOON: options aggregator.mu (1) and aggregator.temperature (0.5); models mlp, cnn, lenet5; "
                 "model.projection_dim (0: none) > 0 gives those models MOON's projection head, for any rule; "
                 "docs/algorithms.md, section 13)")
    lines.append("  resume=<run dir>              continue a run from its checkpoint, with its saved config")
    return "\n".join(lines) + "\n"


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
    lines += ["", keys_text(), "results: outputs/<date>/<time>_<overrides>/ (metrics.csv, rounds.jsonl, model.pt, status.json);",
              "         fedagg-report <sweep dir> summarises a sweep, fedagg-eval <run dir> scores a saved model."]
    return "\n".join(lines)
