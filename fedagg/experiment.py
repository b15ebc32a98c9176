"""Build one experiment from its (Hydra-composed) config and run it.

``validate`` fails fast -- before any data is partitioned or any client
trains -- with a message naming the key and the fix. ``build`` turns the
config into plain components; ``run_server`` is the body of the ServerApp
(the same on every runtime); ``run`` picks the runtime.
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
    base_config: dict[str, Any]
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
    exp = Experiment(cfg, fd, model_spec, None, participation, heterogeneity, x_test, y_test, {}, device)  # type: ignore[arg-type]
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
    tr = cfg.get("train", {})
    exp.base_config = {
        "fedagg.spec": json.dumps(data_spec(cfg), sort_keys=True),
        "fedagg.model": json.dumps(model_spec, sort_keys=True),
        "seed": seed, "device": device,
        **{f"train.{k}": v for k, v in tr.items() if v is not None},
    }
    return exp


# --------------------------------------------------------------------------- the server loop
def run_server(grid: Any, exp: Experiment, out_dir: str | Path) -> list[dict[str, Any]]:
    """Body of the ServerApp: connect, run all rounds, write results."""
    from .flower.host import AggregationHost
    from .report.metrics import Recorder
    from .report.loggers import make_logger  # issue 6
    from . import checkpoint as ckpt

    cfg, out = exp.cfg, Path(out_dir)
    model = exp.model()

    def evaluate_fn(params: Params) -> tuple[float, float]:
        set_params(model, params)
        return evaluate(model, exp.x_test, exp.y_test)

    srv = cfg.get("server", {}) or {}
    host = AggregationHost(
        exp.aggregator, exp.participation, exp.heterogeneity, cfg["num_clients"], exp.fd.num_classes,
        exp.base_config, evaluate_fn,
        round_timeout=srv.get("round_timeout"), connect_timeout=float(srv.get("connect_timeout", 120)),
        max_update_norm=(cfg.get("validation") or {}).get("max_update_norm"),
    )
    rec = Recorder(out)
    metric_logger = make_logger(cfg, out)  # issue 6
    host.params = exp.init_params(0)
    start = 1
    if exp.resume_state is not None:
        start = ckpt.restore(exp.resume_state, exp, host, rec) + 1
        exp.resume_state = None  # restored; do not hold its copy of the models for the whole run
        log.info("resumed from %s at round %d", cfg["resume"], start)
    host.connect(grid)
    every = int((cfg.get("checkpoint") or {}).get("every", 0) or 0)
    total = cfg["rounds"]
    for rnd in range(start, total + 1):
        r = host.run_round(grid, rnd)
        row = rec.add(r)
        metric_logger.log(row)  # issue 6: optional TensorBoard (logger=tensorboard)
        log.info(
            "round %d/%d | asked %d replied %d failed %d rejected %d | train_loss %s | test_acc %.4f test_loss %.4f | %.2fs",
            rnd, total, row["clients_asked"], row["clients_replied"], row["clients_failed"], row["clients_rejected"],
            "n/a" if r.train_loss is None else f"{r.train_loss:.4f}", r.test_accuracy, r.test_loss, r.seconds,
        )
        if every and (rnd % every == 0 or rnd == total):
            ckpt.save(out, rnd, exp, host, rec)
    metric_logger.close()  # issue 6
    set_params(model, host.params)
    torch.save(model.state_dict(), out / "model.pt")
    rec.plot(f"{cfg['aggregator']['name']} on {cfg['dataset']['name']} ({cfg['partition']['name']}), seed {cfg['seed']}")
    return rec.rows


def make_server_app(exp: Experiment, out_dir: str | Path, result: dict[str, Any] | None = None):
    """A ServerApp bound to one experiment (used by the simulation runtimes,
    whose ServerApp Context carries no run config)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:  # noqa: ANN001
        rows = run_server(grid, exp, out_dir)
        if result is not None:
            result["rows"] = rows

    return app


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

    runtime = get_runtime(exp.cfg["runtime"]["name"])
    result: dict[str, Any] = {}
    runtime(make_server_app(exp, out, result), exp, result)
    rows = result.get("rows")
    if rows is None:
        raise RuntimeError("the ServerApp did not finish; see the log above")
    log.info("done in %.1fs; results in %s", time.perf_counter() - t0, out)
    return rows
