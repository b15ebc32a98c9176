"""Build one experiment from its (Hydra-composed) config and run it.

``validate`` fails fast -- before any data is partitioned or any client
trains -- with a message naming the key and the fix. ``build`` turns the
config into plain components (and the typed instruction every client
receives); ``run`` picks the runtime and runs ``server.run_server``, the body
of the ServerApp (the same on every runtime).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import aggregators as agg
from .aggregators.base import AggregatorContext, Params
from .data.federated import FederatedData, get_federated_data
from .env import heterogeneity as het
from .env import participation as part
from .flower.instruction import ClientInstruction, ModelSpec, TrainOptions
from .seeding import rng as named_rng
from .seeding import stream_key
from .task.models import build_model, fit_error
from .task.train import evaluate, get_params, set_params

log = logging.getLogger("fedagg")

RUNTIMES = ("inprocess", "flower", "ray")


class ConfigError(ValueError):
    """A bad config: raised before any training starts."""


def to_plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return json.loads(json.dumps(cfg))


def _opts(section: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (section or {}).items() if k != "name"}


# --------------------------------------------------------------------------- validation
def validate(cfg: Mapping[str, Any]) -> None:
    def need(key: str) -> Any:
        node: Any = cfg
        for part_ in key.split("."):
            if not isinstance(node, Mapping) or part_ not in node:
                raise ConfigError(f"config key '{key}' is missing")
            node = node[part_]
        return node

    n = need("num_clients")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"num_clients={n!r} must be an integer >= 1")
    r = need("rounds")
    if not isinstance(r, int) or r < 1:
        raise ConfigError(f"rounds={r!r} must be an integer >= 1")
    if not isinstance(need("seed"), int):
        raise ConfigError(f"seed={cfg['seed']!r} must be an integer")
    from .data.datasets import available as datasets
    from .data.partition import available as partitions
    from .task.models import available as models

    for key, choices in (
        ("aggregator.name", agg.available()), ("dataset.name", datasets()), ("partition.name", partitions()),
        ("participation.name", part.available()), ("heterogeneity.name", het.available()),
        ("model.name", models()), ("runtime.name", list(RUNTIMES)),
    ):
        if need(key) not in choices:
            raise ConfigError(f"{key}='{need(key)}' is not known; valid choices: {', '.join(choices)}")
    name = cfg["aggregator"]["name"]
    alpha = cfg["partition"].get("alpha")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ConfigError(f"partition.alpha={alpha!r} must be > 0 (smaller = more label skew)")
    dev = str(cfg.get("device", "cpu"))
    if dev not in ("cpu", "auto") and not dev.startswith("cuda"):
        raise ConfigError(f"device='{dev}' must be cpu, cuda, cuda:<i> or auto")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device='{dev}' but CUDA is not available on this machine; use device=cpu (or auto)")
    gpus = float(cfg["runtime"].get("num_gpus_per_client", 0.0) or 0.0)
    if gpus < 0 or gpus > 1:
        raise ConfigError(f"runtime.num_gpus_per_client={gpus} must be in [0, 1]")
    if gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(
            f"runtime.num_gpus_per_client={gpus} but this machine has no CUDA GPU; set runtime.num_gpus_per_client=0"
        )
    cpus = float(cfg["runtime"].get("num_cpus_per_client", 1) or 1)
    if cpus <= 0 or cpus > (os.cpu_count() or 1):
        raise ConfigError(
            f"runtime.num_cpus_per_client={cpus} must be in (0, {os.cpu_count()}] (this machine's CPU count)"
        )
    tr = cfg.get("train", {})
    for key in ("epochs", "batch_size"):
        v = tr.get(key, 1)
        if not isinstance(v, int) or v < (0 if key == "epochs" else 1):
            raise ConfigError(f"train.{key}={v!r} must be a positive integer")
    if not (isinstance(tr.get("lr", 0.1), (int, float)) and tr.get("lr", 0.1) > 0):
        raise ConfigError(f"train.lr={tr.get('lr')!r} must be > 0")
    from .task.train import OPTIMIZERS

    if tr.get("optimizer", "sgd") not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={tr.get('optimizer')!r} is not known; valid choices: {', '.join(OPTIMIZERS)}")
    decay = tr.get("lr_decay", 1.0)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ConfigError(f"train.lr_decay={decay!r} must be in (0, 1] (1 = constant learning rate)")
    every = tr.get("lr_decay_every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"train.lr_decay_every={every!r} must be an integer >= 1 (rounds between decays)")
    # aggregator options, from the class signature (its **kw only forwards to the base, which refuses extras)
    sig = inspect.signature(agg.get(name).__init__)
    if not any(p.kind == p.VAR_KEYWORD and p.name != "kw" for p in sig.parameters.values()):
        known = {p for p in sig.parameters if p not in ("self", "ctx", "kw", "options")}
        unknown = sorted(set(_opts(cfg["aggregator"])) - known)
        if unknown:
            raise ConfigError(
                f"aggregator.{unknown[0]} is not an option of aggregator '{name}'; valid options: {', '.join(sorted(known))}"
            )


# --------------------------------------------------------------------------- building
@dataclass
class Experiment:
    cfg: dict[str, Any]
    fd: FederatedData
    model_spec: dict[str, Any]
    aggregator: agg.Aggregator
    participation: part.Participation
    heterogeneity: het.Heterogeneity
    x_test: np.ndarray
    y_test: np.ndarray
    instruction: ClientInstruction  # what every client is told (typed; one record)
    device: str
    resume_state: dict[str, Any] | None = None  # a checked checkpoint (resume=...), restored by run_server

    def model(self) -> torch.nn.Module:
        s = self.model_spec
        return build_model(s["name"], tuple(s["input_shape"]), s["num_classes"], **s["options"])

    def init_params(self, key: int = 0) -> Params:
        """Initial model from the named stream (seed, "init", key)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_key(self.cfg["seed"], "init", key))
            return get_params(self.model())


def data_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"seed": cfg["seed"], "num_clients": cfg["num_clients"],
                            "val_fraction": float(cfg.get("val_fraction", 0.0))}
    for group in ("dataset", "partition", "noise"):
        for k, v in (cfg.get(group) or {}).items():
            spec[f"{group}.{k}"] = v
    return spec


def build(cfg: Mapping[str, Any]) -> Experiment:
    cfg = to_plain(cfg)
    validate(cfg)
    try:
        fd = get_federated_data(data_spec(cfg))
    except ValueError as e:  # missing / malformed data, bad partition options: one line, exit 2
        raise ConfigError(str(e)) from e
    misfit = fit_error(cfg["model"]["name"], cfg["dataset"]["name"], fd.data.input_kind, fd.data.input_shape)
    if misfit:
        raise ConfigError(misfit)
    model_spec = {
        "name": cfg["model"]["name"], "options": _opts(cfg["model"]),
        "input_shape": list(fd.data.input_shape), "num_classes": fd.num_classes,
    }
    seed = cfg["seed"]
    x_test, y_test = fd.data.x_test, fd.data.y_test
    aopts = _opts(cfg["aggregator"])
    cls = agg.get(cfg["aggregator"]["name"])
    proxy = None
    if getattr(cls, "needs_proxy", False):  # FedLAW: class-balanced proxy carved from the test set
        frac = float(aopts.get("proxy_fraction", 0.02))
        per_class = max(1, int(round(frac * len(y_test) / fd.num_classes)))
        r = named_rng(seed, "proxy")
        pick = np.concatenate([r.permutation(np.flatnonzero(y_test == c))[:per_class] for c in range(fd.num_classes)])
        proxy = (x_test[pick], y_test[pick])
        keep = np.setdiff1d(np.arange(len(y_test)), pick)
        x_test, y_test = x_test[keep], y_test[keep]
    participation = part.build_participation(
        cfg["participation"]["name"], cfg["num_clients"], seed, fd.lazy_label_dists(), **_opts(cfg["participation"])
    )
    heterogeneity = het.build_heterogeneity(cfg["heterogeneity"]["name"], cfg["num_clients"], seed, **_opts(cfg["heterogeneity"]))
    dev = str(cfg.get("device", "cpu"))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
    tr = cfg["train"]
    instruction = ClientInstruction(
        data=data_spec(cfg),
        model=ModelSpec(model_spec["name"], tuple(model_spec["input_shape"]), int(model_spec["num_classes"]),
                        dict(model_spec["options"])),
        train=TrainOptions(
            epochs=int(tr["epochs"]), steps=int(tr["steps"]), batch_size=int(tr["batch_size"]), lr=float(tr["lr"]),
            momentum=float(tr["momentum"]), weight_decay=float(tr["weight_decay"]),
            proximal_mu=float(tr["proximal_mu"]), optimizer=str(tr["optimizer"]), lr_decay=float(tr["lr_decay"]),
            lr_decay_every=int(tr["lr_decay_every"]),
        ),
        seed=seed, device=device,
    )
    exp = Experiment(cfg, fd, model_spec, None, participation, heterogeneity, x_test, y_test, instruction, device)  # type: ignore[arg-type]
    ctx = AggregatorContext(
        num_clients=cfg["num_clients"], num_classes=fd.num_classes, seed=seed,
        dataset=str(cfg["dataset"]["name"]), model_fn=exp.model,
        init_params_fn=lambda cid: exp.init_params(cid + 1), proxy_data=proxy,
        oracle_participation_probs=np.asarray(participation.probs, dtype=float),
    )
    try:
        exp.aggregator = agg.build(cfg["aggregator"]["name"], ctx, **aopts)
    except TypeError as e:
        raise ConfigError(f"aggregator options: {e}") from e
    if cfg.get("resume"):  # read and checked once, before any runtime starts
        from . import checkpoint as ckpt

        try:
            exp.resume_state = ckpt.load_for_resume(Path(cfg["resume"]), cfg)
        except ckpt.ResumeError as e:
            raise ConfigError(str(e)) from e
    return exp


def write_config(cfg: Mapping[str, Any], out: Path) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))


def run(cfg: Mapping[str, Any], out_dir: str | Path) -> list[dict[str, Any]]:
    """Validate, build and run one experiment on the configured runtime."""
    t0 = time.perf_counter()
    exp = build(cfg)
    threads = exp.cfg.get("torch_threads")
    if threads:  # small models: one thread avoids OpenMP oversubscription (see README, Performance)
        torch.set_num_threads(int(threads))
    out = Path(out_dir)
    write_config(exp.cfg, out)
    from .runtime import get_runtime
    from .server import make_server_app

    runtime = get_runtime(exp.cfg["runtime"]["name"])
    result: dict[str, Any] = {}
    runtime(make_server_app(exp, out, result), exp, result)
    rows = result.get("rows")
    if rows is None:
        raise RuntimeError("the ServerApp did not finish; see the log above")
    log.info("done in %.1fs; results in %s", time.perf_counter() - t0, out)
    return rows
