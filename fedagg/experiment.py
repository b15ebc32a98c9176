"""Build one experiment from its typed config and run it.

``build`` loads and checks the config (:func:`fedagg.config.load`), then
turns it into plain components (and the typed instruction every client
receives); ``run`` picks the runtime and runs ``server.run_server``, the body
of the ServerApp (the same on every runtime).
"""
from __future__ import annotations

import inspect
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from . import aggregators as agg
from .aggregators.base import AggregatorContext, Params
from .config import Config, load, locate_target, options, target_of, to_dict
from .data.federated import FederatedData, get_federated_data
from .env import devices as dev
from .env import heterogeneity as het
from .env import participation as part
from .env.clock import Clock
from .errors import ConfigError, ResumeError
from .flower.instruction import ClientInstruction, ModelSpec, TrainOptions
from .seeding import rng as named_rng
from .seeding import stream_key
from .task.cohort import planned_steps
from .task.models import build_model, fit_error
from .task.train import get_params

log = logging.getLogger("fedagg")

__all__ = ["ConfigError", "Experiment", "build", "data_spec", "load", "run", "write_config"]

_KEYS = ("aggregator", "dataset", "partition", "noise", "model", "participation", "heterogeneity", "device_profile",
         "num_clients")


def _as_config_error(group: str, e: BaseException) -> ConfigError:
    """A builder's ValueError/TypeError (bad option value) as a one-line config error."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(msg if msg.startswith(_KEYS) else f"{group}: {msg}")


@contextmanager
def _refusals_of(group: str) -> Iterator[None]:
    """Turn a builder's refusal while building ``group`` into a one-line ConfigError: a ValueError/TypeError, or
    hydra's InstantiationException around a user ``_target_``'s own error."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise _as_config_error(group, e) from None
    except Exception as e:
        if type(e).__name__ != "InstantiationException":
            raise
        raise _as_config_error(group, e.__cause__ or e) from None


# --------------------------------------------------------------------------- building
@dataclass
class Experiment:
    cfg: Config
    fd: FederatedData
    model_spec: dict[str, Any]
    aggregator: agg.Aggregator
    participation: part.Participation
    heterogeneity: het.Heterogeneity
    x_test: np.ndarray
    y_test: np.ndarray
    instruction: ClientInstruction  # what every client is told (typed; one record)
    device: str
    clock: Clock | None = None  # the virtual clock (device_profile != none): the round's plan with its deadline
    async_loop: Any = None  # server.mode != sync: the AsyncLoop (fedagg.flower.async_loop), set by run_server
    resume_state: dict[str, Any] | None = None  # a checked checkpoint (resume=...), restored by run_server
    outcome: Exception | None = None  # set by run_server when the run stopped early (failed / interrupted)
    client_state: Any = None  # the virtual clients' states (rules with client state): runtime.state_store

    def state_names(self) -> list[str]:
        """The arrays of one client's state: the model's learnable parameters."""
        return [n for n, _ in self.model().named_parameters()]

    def model(self) -> torch.nn.Module:
        s = self.model_spec
        return build_model(s["name"], tuple(s["input_shape"]), s["num_classes"], **s["options"])

    def init_params(self, key: int = 0) -> Params:
        """Initial model from the named stream (seed, "init", key)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_key(self.cfg.seed, "init", key))
            return get_params(self.model())


def data_spec(cfg: Config) -> dict[str, Any]:
    spec: dict[str, Any] = {"seed": cfg.seed, "num_clients": cfg.num_clients, "val_fraction": float(cfg.val_fraction)}
    if cfg.server_holdout > 0:  # only when used: every other spec stays as it was
        spec["server_holdout"] = float(cfg.server_holdout)
    for group in ("dataset", "partition", "noise"):
        for k, v in getattr(cfg, group).items():
            if k == "_target_" and not v:
                continue  # no user loader: the spec stays what it was before plug-ins existed
            spec[f"{group}.{k}"] = v
    return spec


def build(raw: Any, deployment: bool = False) -> Experiment:
    """Load and check the config, then build every component. A builder's
    refusal (a value only checkable with the data, e.g. ``partition=natural``
    on a dataset without natural clients) is a ConfigError too, raised here,
    before any runtime starts. ``deployment``: checked for the SuperLink app
    (:mod:`fedagg.deploy_app`; the asynchronous modes on real time)."""
    cfg = load(raw, deployment)
    with _refusals_of("dataset"):  # missing / malformed data, bad partition options: one line, exit 2
        fd = get_federated_data(data_spec(cfg))
    model_target = target_of(cfg.model)
    if model_target is None:
        misfit = fit_error(cfg.model["name"], cfg.dataset["name"], fd.data.input_kind, fd.data.input_shape)
        if misfit:
            raise ConfigError(misfit)
    model_spec: dict[str, Any] = {
        "name": model_target or cfg.model["name"], "options": options(cfg.model),
        "input_shape": list(fd.data.input_shape), "num_classes": fd.num_classes,
    }
    seed = cfg.seed
    x_test, y_test = fd.data.x_test, fd.data.y_test
    aopts = options(cfg.aggregator)
    agg_target = target_of(cfg.aggregator)
    cls = locate_target("aggregator", agg_target) if agg_target else agg.get(cfg.aggregator["name"])
    proxy = None
    if getattr(cls, "needs_proxy", False) and len(fd.holdout):  # FedLAW: the training data held out of
        proxy = (fd.data.x_train[fd.holdout], fd.data.y_train[fd.holdout])  # every client alike
    elif getattr(cls, "needs_proxy", False):  # FedLAW: class-balanced proxy carved from the test set
        default = inspect.signature(cls).parameters["proxy_fraction"].default
        frac = float(aopts["proxy_fraction"] if "proxy_fraction" in aopts else default)
        per_class = max(1, int(round(frac * len(y_test) / fd.num_classes)))
        r = named_rng(seed, "proxy")
        pick = np.concatenate([r.permutation(np.flatnonzero(y_test == c))[:per_class] for c in range(fd.num_classes)])
        proxy = (x_test[pick], y_test[pick])
        keep = np.setdiff1d(np.arange(len(y_test)), pick)
        x_test, y_test = x_test[keep], y_test[keep]
    with _refusals_of("participation"):
        participation = part.build_participation(
            cfg.participation["name"], cfg.num_clients, seed, fd.lazy_label_dists(), **options(cfg.participation)
        )
    heterogeneity = het.build_heterogeneity(cfg.heterogeneity["name"], cfg.num_clients, seed,
                                            **options(cfg.heterogeneity))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    tr = cfg.train
    instruction = ClientInstruction(
        data=data_spec(cfg),
        model=ModelSpec(model_spec["name"], tuple(model_spec["input_shape"]), int(model_spec["num_classes"]),
                        dict(model_spec["options"])),
        train=TrainOptions(
            epochs=tr.epochs, steps=tr.steps, batch_size=tr.batch_size, lr=tr.lr, momentum=tr.momentum,
            weight_decay=tr.weight_decay, proximal_mu=tr.proximal_mu, optimizer=tr.optimizer,
            lr_decay=tr.lr_decay, lr_decay_every=tr.lr_decay_every,
        ),
        seed=seed, device=device,
    )
    exp = Experiment(cfg, fd, model_spec, None, participation, heterogeneity, x_test, y_test, instruction, device)  # type: ignore[arg-type]
    with _refusals_of("model"):
        exp.model()
    with _refusals_of("device_profile"):
        exp.clock = build_clock(exp)
    ctx = AggregatorContext(
        num_clients=cfg.num_clients, num_classes=fd.num_classes, seed=seed,
        dataset=str(cfg.dataset["name"]), model_fn=exp.model,
        init_params_fn=lambda cid: exp.init_params(cid + 1), proxy_data=proxy,
        oracle_participation_probs=np.asarray(participation.probs, dtype=float),
        client_momentum=float(tr.momentum) if tr.optimizer == "sgd" else None,
    )
    with _refusals_of("aggregator"):
        if agg_target:  # a user's rule: hydra.utils.instantiate(_target_, ctx, **options)
            from hydra.utils import instantiate

            exp.aggregator = instantiate({"_target_": agg_target, **aopts}, ctx, _convert_="all")
        else:
            exp.aggregator = agg.build(cfg.aggregator["name"], ctx, **aopts)
    if exp.aggregator.needs_fedagg_client and cfg.server.mode != "sync":
        raise ConfigError(f"server.mode={cfg.server.mode}: aggregator={cfg.aggregator['name']} (client-side terms, "
                          "per-client state) runs in synchronous rounds only; use server.mode=sync")
    if exp.aggregator.needs_fedagg_client and cfg.dp.mode != "none":
        raise ConfigError(f"dp.mode={cfg.dp.mode}: Flower's DP clipping takes messages with one ArrayRecord, and "
                          f"aggregator={cfg.aggregator['name']} sends and replies its own arrays too (control variates, "
                          "K*lr): use dp.mode=none with this aggregator")
    terms = exp.aggregator.client_terms()
    if terms.get("rule") == "moon":
        from .task.contrastive import REPRESENTED, has_representation

        if not has_representation(exp.model()):
            raise ConfigError(f"model={model_spec['name']}: aggregator=moon contrasts a model's representation, which "
                              f"this model does not expose; use model={' or '.join(REPRESENTED)} (mlp: depth >= 2)")
    if terms and (terms.get("rule") == "fedavg_m" or float(terms.get("beta", 1.0)) < 1.0) and cfg.train.momentum > 0:
        # Cheng et al.'s local steps are plain SGD on the mixed direction; SGD momentum on top would count twice
        raise ConfigError(f"aggregator={cfg.aggregator['name']} with momentum={terms.get('beta')} mixes the server's "
                          f"momentum into each local step, which are plain SGD steps: train.momentum="
                          f"{cfg.train.momentum} would add a second momentum; set train.momentum=0")
    if exp.aggregator.client_state:  # the store's budget, checked before anything runs
        from .runtime.state_store import check_budget, state_bytes

        if cfg.runtime.name == "flower" and (cfg.checkpoint.every > 0 or cfg.resume):
            raise ConfigError(f"aggregator={cfg.aggregator['name']} keeps a state per client, which runtime=flower "
                              "holds in Flower's own node Contexts, outside fedagg's checkpoints: use "
                              "runtime=inprocess or runtime=ray with checkpoint.every / resume")

        check_budget(cfg.runtime.state_memory_mb, cfg.runtime.state_spill, cfg.num_clients,
                     state_bytes(exp.init_params(0), exp.state_names()))
    if cfg.resume:  # read and checked once, before any runtime starts
        from . import checkpoint as ckpt

        try:
            exp.resume_state = ckpt.load_for_resume(Path(cfg.resume), to_dict(cfg))
            ckpt.check_client_state(exp.resume_state, Path(cfg.resume), bool(exp.aggregator.client_state),
                                    exp.state_names())
        except ResumeError as e:
            raise ConfigError(str(e)) from e
    return exp


def build_clock(exp: Experiment) -> Clock | None:
    """The virtual clock of ``device_profile`` (None for ``none``): the devices, the heterogeneity plan it
    cuts at ``server.deadline_s``, each client's planned steps and the model's size on the wire."""
    cfg, fd, tr = exp.cfg, exp.fd, exp.cfg.train
    profile = dev.build_device_profile(cfg.device_profile["name"], cfg.num_clients, cfg.seed, fd.label_hist,
                                       **options(cfg.device_profile))
    if not profile.enabled:
        return None
    profile.check_labels(fd.num_classes)

    def steps(client: int, plan: Any) -> int:
        epochs = plan.get("epochs")
        return planned_steps(fd.train_size(client), epochs=tr.epochs if epochs is None else int(epochs),
                             steps=tr.steps, batch_size=tr.batch_size,
                             work_fraction=float(plan.get("work_fraction", 1.0)))

    model_bytes = sum(int(np.asarray(v).nbytes) for v in exp.init_params(0).values())
    return Clock(profile, exp.heterogeneity, steps, model_bytes, tr.batch_size, cfg.server.deadline_s,
                 cfg.server.deadline_mode)


def write_config(cfg: Config, out: Path) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def run(cfg: Any, out_dir: str | Path) -> list[dict[str, Any]]:
    """Validate, build and run one experiment on the configured runtime, with
    its outcome in ``out_dir/status.json`` (:class:`fedagg.outcomes.RunStatus`):
    a config the checks refuse writes nothing; otherwise ``running``, then
    ``completed``, ``failed`` (RunFailed or any error, re-raised) or
    ``interrupted`` (RunInterrupted / KeyboardInterrupt, re-raised)."""
    import traceback

    from .outcomes import RunFailed, RunInterrupted, RunStatus
    from .sweep import prepare_job

    t0 = time.perf_counter()
    out = Path(out_dir)
    resume = cfg.get("resume") if isinstance(cfg, Mapping) else getattr(cfg, "resume", None)
    status = RunStatus(out, same_dir=bool(resume) and Path(str(resume)).resolve() == out.resolve())
    try:
        typed = load(cfg)
        prepare_job(typed)  # the CPU share of a parallel sweep job
        exp = build(typed)
        status.running()
        if exp.cfg.torch_threads:  # small models: one thread avoids OpenMP oversubscription (see README, Performance)
            torch.set_num_threads(exp.cfg.torch_threads)
        write_config(exp.cfg, out)
        if exp.aggregator.client_state and exp.cfg.runtime.name != "flower":  # flower: Flower's Contexts keep them
            from .runtime.state_store import open_store

            rt = exp.cfg.runtime
            exp.client_state = open_store(rt.state_memory_mb, rt.state_spill, out)
        from .runtime import get_runtime
        from .server import make_server_app

        runtime = get_runtime(exp.cfg.runtime.name)
        result: dict[str, Any] = {}
        runtime(make_server_app(exp, out, result), exp, result)
        rows = result.get("rows")
        if exp.outcome is not None:
            raise exp.outcome
        if rows is None:
            raise RuntimeError("the ServerApp did not finish; see the log above")
    except ConfigError:
        raise  # refused before anything ran: nothing written
    except RunFailed as e:
        status.failed(str(e))
        raise
    except (RunInterrupted, KeyboardInterrupt) as e:
        status.interrupted(e.last_round if isinstance(e, RunInterrupted) else None)
        raise
    except Exception as e:
        status.failed(f"{type(e).__name__}: {e}", traceback.format_exc())
        raise
    status.completed(rows[-1]["test_accuracy"] if rows else None)
    log.info("done in %.1fs; results in %s", time.perf_counter() - t0, out)
    return rows
