"""The config tree, typed: one dataclass per fixed section, registered in
Hydra's ConfigStore as ``base_config`` (the first entry of conf/config.yaml's
defaults list), so Hydra type-checks every override at composition and
refuses keys the schema does not have (``+num_client=5``).

Each fixed key has ONE default, here. Group sections (``aggregator``,
``dataset``, ``partition``, ``noise``, ``model``, ``participation``,
``heterogeneity``, ``logger``) stay plain YAML mappings with a ``name`` (the
registered builder) and that builder's options; :func:`load` checks the
options against the builder's signature and type annotations, including
ranges written as ``Annotated[int, annotated_types.Gt(0)]``.

:func:`load` is the one step from a composed DictConfig to the typed
:class:`Config`; it raises :class:`~fedagg.errors.ConfigError` (one line:
key, value, what is allowed) for every value that cannot work, before any
data is loaded or any runtime starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import math
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Literal, Optional, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # packaged with fedagg (package-data)
GROUPS = ("aggregator", "dataset", "partition", "noise", "model", "participation", "heterogeneity", "device_profile",
          "logger")


# --------------------------------------------------------------------------- the schema
@dataclass
class TrainConfig:
    """Local training on each client."""

    epochs: int = 2
    steps: int = 0  # > 0: exactly this many minibatch steps instead of epochs (FedAU's I)
    batch_size: int = 32
    lr: float = 0.05
    lr_decay: float = 1.0  # round r trains at lr * lr_decay ** ((r - 1) // lr_decay_every); 0.99 = FedLAW's decay
    lr_decay_every: int = 1  # 1 = exponential per round; k = a step schedule (e.g. lr_decay=0.5 lr_decay_every=10)
    optimizer: str = "sgd"  # sgd | adam (client optimiser, fresh each round; momentum is SGD's)
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx client term (any aggregator)


@dataclass
class ServerConfig:
    round_timeout: Optional[float] = None  # seconds to wait for replies; null = wait for all
    connect_timeout: float = 120.0
    max_failed_rounds: int = 3  # stop (status failed, exit 1) after this many rounds in a row without an accepted update (every asked client failed or was rejected); 0 = never
    # the virtual clock's round deadline (needs a device_profile): simulated seconds, null = wait for the last client
    deadline_s: Optional[float] = None
    deadline_mode: str = "drop"  # drop: clients past the deadline miss the round | partial: they send the steps that fit
    # sync: rounds | fedasync, fedbuff, fedfix: asynchronous server updates on the virtual clock (a deployment: real time; docs/algorithms.md)
    mode: str = "sync"
    concurrency: Optional[int] = None  # async modes: clients in flight at once (1..num_clients); null: min(10, num_clients)
    buffer_size: Optional[int] = None  # fedbuff: K updates per server step (1..num_clients); null: ceil(concurrency / 2)
    window_s: Optional[float] = None  # fedfix: the fixed window between server updates, seconds (> 0; simulated, real in a deployment)
    alpha: float = 0.6  # fedasync: the mixing weight alpha in (0, 1]
    staleness: str = "polynomial"  # fedasync, fedbuff: polynomial (tau+1)^-a | hinge | constant
    staleness_a: float = 0.5  # polynomial exponent a (0.5: FedBuff's 1/sqrt(1+tau)); hinge slope a
    staleness_b: float = 4.0  # hinge: staleness up to b counts fully


@dataclass
class ValidationConfig:
    max_update_norm: Optional[float] = None  # reject updates with ||θ_k − x_t|| above this


@dataclass
class EvalConfig:
    every: int = 0  # k > 0: every client scores the global model on its held-out split (val_fraction) every k rounds and at round 0


@dataclass
class DPConfig:
    """Flower's central differential privacy around the run's strategy (fedagg/dp.py)."""

    mode: str = "none"  # none | server_fixed | server_adaptive | client_fixed | client_adaptive (Flower's DP wrappers)
    noise_multiplier: float = 0.0  # Gaussian noise stdev = noise_multiplier * clipping_norm / num_sampled_clients
    clipping_norm: float = 1.0  # *_fixed: the norm each update is clipped to; *_adaptive: its start value
    num_sampled_clients: Optional[int] = None  # clients a round is expected to ask; null = num_clients
    target_clipped_quantile: float = 0.5  # *_adaptive: the fraction of updates to clip
    clip_norm_lr: float = 0.2  # *_adaptive: the norm's learning rate


def check_dp(dp: DPConfig) -> None:
    from .dp import MODES

    _need(dp.mode in MODES, "dp.mode", dp.mode, f"valid choices: {', '.join(MODES)}")
    _need(_finite(dp.noise_multiplier) and dp.noise_multiplier >= 0, "dp.noise_multiplier", dp.noise_multiplier,
          "it must be a finite number >= 0")
    _need(_finite(dp.clipping_norm) and dp.clipping_norm > 0, "dp.clipping_norm", dp.clipping_norm,
          "it must be a finite number > 0")
    _need(dp.num_sampled_clients is None or dp.num_sampled_clients >= 1, "dp.num_sampled_clients",
          dp.num_sampled_clients, "it must be an integer >= 1 or null (num_clients)")
    _need(_finite(dp.target_clipped_quantile) and 0 <= dp.target_clipped_quantile <= 1, "dp.target_clipped_quantile",
          dp.target_clipped_quantile, "it must be in [0, 1]")
    _need(_finite(dp.clip_norm_lr) and dp.clip_norm_lr > 0, "dp.clip_norm_lr", dp.clip_norm_lr, "it must be > 0")


@dataclass
class CheckpointConfig:
    every: int = 0  # write checkpoint.pkl every k rounds (0 = never)


@dataclass
class RuntimeConfig:
    """How Messages reach the ClientApps. ``inprocess`` reads only ``name``;
    ``flower`` (Flower's simulation engine) the resource keys and ``address``;
    ``ray`` (fedagg's persistent actor pool) all of them."""

    name: str = "ray"
    num_cpus_per_client: float = 1.0  # Ray CPUs per client actor; also torch threads in each ray actor
    num_gpus_per_client: float = 0.0  # fractional GPU per client, e.g. 0.25 = 4 clients share a GPU
    num_cpus: Optional[int] = None  # CPUs of a local Ray instance (null = all cores); ignored with address
    num_gpus: Optional[float] = None
    address: Optional[str] = None  # an existing cluster: auto, host:port or ray://host:port
    num_workers: Optional[int] = None  # ray: actors; null = cluster CPUs / num_cpus_per_client (<= num_clients)
    connect_timeout: float = 10.0  # ray: seconds to reach runtime.address before failing
    start_timeout: float = 300.0  # ray: seconds for the workers to start
    batch_size: Any = 8  # ray: messages (a chunk: one) per actor call (int >= 1), or auto = one call per actor per round
    max_retries: int = 2  # ray: resend a lost worker's messages this many times
    vectorize: Any = "auto"  # inprocess/ray: train a round's clients as stacked models (torch.func.vmap): auto|true|false
    cohort_chunk: int = 10  # inprocess/ray: clients per stacked model, ordered by planned steps, then client id
    state_memory_mb: float = 1024.0  # inprocess/ray, rules with client state (scaffold): MB of states kept in memory
    state_spill: bool = True  # ... beyond it, spill to client_state.sqlite in the run folder (false: refuse)


def _group(name: str, target: bool = False) -> Any:
    """A group section's default; ``target``: the group also takes a user's
    ``_target_`` (so ``aggregator._target_=pkg.mod.Class`` needs no ``+``)."""
    return field(default_factory=lambda: {"name": name, "_target_": None} if target else {"name": name})


@dataclass
class Config:
    aggregator: Dict[str, Any] = _group("fedavg", target=True)
    dataset: Dict[str, Any] = _group("mnist1d", target=True)
    partition: Dict[str, Any] = _group("dirichlet")
    noise: Dict[str, Any] = _group("none")
    model: Dict[str, Any] = _group("cnn1d", target=True)
    participation: Dict[str, Any] = _group("full")
    heterogeneity: Dict[str, Any] = _group("none")
    device_profile: Dict[str, Any] = _group("none")  # each client's step time, links and latency: the virtual clock
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logger: Dict[str, Any] = _group("csv")
    num_clients: int = 20
    rounds: int = 30
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:<i> | auto
    val_fraction: float = 0.0  # per-client validation split
    # fraction of the training set held out of every client's data (class-balanced) as the server's own
    # labelled data; FedLAW learns on it when > 0 (else on a proxy carved from the test set)
    server_holdout: float = 0.0
    torch_threads: Optional[int] = 1  # torch intra-op threads in the server process; null = torch's default
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    resume: Optional[str] = None  # a run folder to resume from
    # values a preset (conf/experiment/*.yaml) keeps for its own interpolations, e.g. a
    # per-aggregator lr table read as ${vars.claim_lr.${aggregator.name}}; fedagg never reads them
    vars: Dict[str, Any] = field(default_factory=dict)


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


register_schema()


def options(section: Mapping[str, Any]) -> dict[str, Any]:
    """A group section's builder options: every key but ``name`` and ``_target_``."""
    return {k: v for k, v in section.items() if k not in ("name", "_target_")}


TARGET_GROUPS = ("aggregator", "model", "dataset")  # groups a user's own class or function may fill


def target_of(section: Mapping[str, Any]) -> str | None:
    """The user's ``_target_`` (``pkg.mod.Name``) of a group section, if any."""
    t = section.get("_target_")
    return str(t) if t else None


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dicts (config.yaml in a run folder, checkpoints)."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------- builders of each group
def _builder(group: str, name: str) -> tuple[Callable[..., Any], int]:
    """The registered callable of ``group.name`` and how many leading
    parameters are not options (filled in by fedagg)."""
    if group == "aggregator":
        from . import aggregators

        return aggregators.get(name), 1  # (ctx, **options)
    if group == "dataset":
        from .data import datasets

        return datasets._LOADERS.get(name), 0  # (seed=, **options); seed is passed by keyword  # noqa: SLF001
    if group == "partition":
        from .data import partition

        return partition._PARTITIONERS.get(name), 3  # (labels, n, rng, **options)  # noqa: SLF001
    if group == "participation":
        from .env import participation

        return participation._PATTERNS.get(name), 3  # (num_clients, seed, label_dists, **options)  # noqa: SLF001
    if group == "heterogeneity":
        from .env import heterogeneity

        return heterogeneity._MODELS.get(name), 2  # (num_clients, seed, **options)  # noqa: SLF001
    if group == "device_profile":
        from .env import devices

        return devices._PROFILES.get(name), 3  # (num_clients, seed, label_hist, **options)  # noqa: SLF001
    if group == "model":
        from .task import models

        return models.builder(name), 2  # (input_shape, num_classes, **options)
    if group == "logger":
        from .report import loggers

        return loggers.get(name), 1  # (out_dir, **options)
    raise KeyError(group)


_FIXED = {"seed", "groups"}  # filled in by fedagg, never options


def _signature_options(fn: Callable[..., Any], skip: int) -> tuple[dict[str, inspect.Parameter], bool, dict[str, Any]]:
    """(option parameters, open?, type hints) of a builder; a class's
    ``**kw`` that only forwards to its fedagg base class is followed."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    chain: list[Callable[..., Any]]
    if isinstance(fn, type):
        chain = [c.__dict__["__init__"] for c in fn.__mro__ if "__init__" in c.__dict__ and c is not object]
        mods = [c.__module__ for c in fn.__mro__ if "__init__" in c.__dict__ and c is not object]
    else:
        chain, mods = [fn], [getattr(fn, "__module__", "")]
    open_ = False
    for i, (f, mod) in enumerate(zip(chain, mods)):
        try:
            sig = inspect.signature(f)
        except (TypeError, ValueError):
            return params, True, hints
        try:
            hints.update({k: v for k, v in get_type_hints(f, include_extras=True).items() if k not in hints})
        except Exception:  # noqa: BLE001 - unresolvable annotations: no type check for this builder
            pass
        ps = [p for p in sig.parameters.values() if p.name != "self"]
        n_skip = skip if i == 0 or isinstance(fn, type) else 0
        positional = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        skipped = {p.name for p in positional[:n_skip]}
        for p in ps:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in skipped or p.name in _FIXED:
                continue
            params.setdefault(p.name, p)
        var_kw = [p for p in ps if p.kind is p.VAR_KEYWORD]
        if not var_kw:
            return params, False, hints
        if not mod.startswith("fedagg"):  # a user's or library's **kwargs: anything may be meant
            open_ = True
            break
        if i + 1 == len(chain) or not isinstance(fn, type):  # fedagg's last **options refuses extras
            return params, not isinstance(fn, type), hints
    return params, open_, hints


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(meta: Sequence[Any]) -> dict[str, Any]:
    """The bounds (gt, ge, lt, le) that ``Annotated`` metadata sets (annotated_types' Gt, Ge, Lt, Le, Interval)."""
    out: dict[str, Any] = {}
    for m in meta:
        for attr, _ in _BOUNDS:
            b = getattr(m, attr, None)
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                out[attr] = b
    return out


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base = {int: "an integer", float: "a number"}.get(args[0]) or _type_name(args[0])
        bounds = _bounds(hint.__metadata__)
        lo = next(((a, b) for a, b in bounds.items() if a in ("gt", "ge")), None)
        hi = next(((a, b) for a, b in bounds.items() if a in ("lt", "le")), None)
        if lo and hi:
            return f"{base} in {'(' if lo[0] == 'gt' else '['}{lo[1]}, {hi[1]}{')' if hi[0] == 'lt' else ']'}"
        ops = dict(_BOUNDS)
        return " ".join([base, *(f"{ops[a]} {b}" for a, b in bounds.items())])
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, Sequence) and args:
        return "a list of " + re.sub(r"^an? (integer|number)", r"\1s", _type_name(args[0]))
    s = getattr(hint, "__name__", None) if not args else None
    return s or str(hint).replace("typing.", "").replace("collections.abc.", "")


def _within(v: Any, bounds: Mapping[str, Any]) -> bool:
    try:
        return all({"gt": v > b, "ge": v >= b, "lt": v < b, "le": v <= b}[a] for a, b in bounds.items())
    except TypeError:
        return False


def _conforms(v: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:  # a type with bounds, e.g. Annotated[int, annotated_types.Gt(0)]
        return _conforms(v, args[0]) and _within(v, _bounds(hint.__metadata__))
    if origin in (Union, types.UnionType):
        return any(_conforms(v, a) for a in args)
    if hint is type(None) or hint is None:
        return v is None
    if origin is Literal:
        return v in args
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return isinstance(v, str)
    if hint in (list, tuple) or origin in (list, tuple, Sequence):
        if not isinstance(v, (list, tuple)):
            return False
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else Any
        return all(_conforms(x, item) for x in v)
    if hint is dict or origin in (dict, Mapping):
        return isinstance(v, dict)
    return True  # a type this check does not know: the builder decides


def import_object(path: str) -> Any:
    """``pkg.module.Name`` (also ``pkg.module.Class.attr``) imported, like
    Hydra's ``_target_`` resolution, without Hydra's own error logging."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        modname = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name is not None and modname.startswith(e.name):
                continue  # no module at this depth: try a shorter one
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"No module named {parts[0]!r}")


def locate_target(group: str, target: str) -> Callable[..., Any]:
    """Import a user's ``group._target_`` and check it is what the group
    builds (a one-line ConfigError otherwise)."""
    try:
        obj = import_object(target)
    except Exception as e:  # noqa: BLE001 - any import failure is the same config error
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ConfigError(f"{group}._target_={target!r} cannot be imported ({cause}); give the dotted path "
                          "pkg.module.Name of a class or function on PYTHONPATH") from None
    if group == "aggregator":
        from .aggregators import Aggregator

        if not (isinstance(obj, type) and issubclass(obj, Aggregator)):
            raise ConfigError(f"aggregator._target_={target!r} is not a subclass of fedagg.aggregators.Aggregator; "
                              "subclass it and implement aggregate()")
    elif group == "model":
        import torch

        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)) and not callable(obj):
            raise ConfigError(f"model._target_={target!r} is not a torch.nn.Module subclass or a function "
                              "(input_shape, num_classes, **options) -> nn.Module")
    elif not callable(obj):
        raise ConfigError(f"{group}._target_={target!r} is not callable; give a function (seed, **options) -> "
                          "fedagg.data.datasets.Dataset")
    return obj  # type: ignore[no-any-return]


_SKIP = {"aggregator": 1, "model": 2, "dataset": 0}  # leading parameters of a user's _target_ that are not options


def near(key: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``key`` was most likely meant to be (case-insensitive), if any is close."""
    low = {c.lower(): c for c in candidates}
    if key.lower() in low:
        return low[key.lower()]
    m = difflib.get_close_matches(key.lower(), list(low), n=1)
    return low[m[0]] if m else None


def _section_builder(group: str, section: Mapping[str, Any]) -> tuple[str, Callable[..., Any], int]:
    """(what to call it, builder, leading non-option parameters) of a group section."""
    name = section.get("name")
    target = target_of(section)
    if target is not None and group not in TARGET_GROUPS:
        raise ConfigError(f"{group}._target_ is not supported; a user's own class or function can fill "
                          f"{', '.join(TARGET_GROUPS)}")
    if name is None and target is None:
        raise ConfigError(f"{group}.name is missing; pick one with {group}=<choice>")
    if target is not None:
        return target, locate_target(group, target), _SKIP[group]
    try:
        fn, skip = _builder(group, str(name))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return str(name), fn, skip


DISCO_KEYS = ("disco", "disco_a", "disco_b", "disco_metric", "disco_target")  # DiscoComposable's options


def _not_an_option(group: str, builder: str, key: str, value: str, params: Sequence[str]) -> ConfigError:
    if group == "aggregator" and key in DISCO_KEYS:
        from .aggregators import available, get
        from .aggregators.feddisco import DiscoComposable

        able = [n for n in available() if issubclass(get(n), DiscoComposable)]
        if builder == "feddisco":
            return ConfigError(f"aggregator.{key}={value}: aggregator 'feddisco' is FedDisco itself (its a, b are "
                               f"aggregator.a, aggregator.b); to compose FedDisco with a rule, use one of "
                               f"{', '.join(able)} with aggregator.disco=true")
        return ConfigError(f"aggregator.{key}={value}: aggregator '{builder}' cannot take FedDisco's weights; "
                           f"the rules that can: {', '.join(able)} (or aggregator=feddisco)")
    if group == "model" and key == "projection_dim":  # MOON's head needs a representation to project
        from .task.contrastive import REPRESENTED

        return ConfigError(f"model.projection_dim={value}: model '{builder}' takes no projection head (the models "
                           f"that expose a representation do: {', '.join(REPRESENTED)}); use "
                           f"model={' or '.join(REPRESENTED)} (mlp: depth >= 2), or drop model.projection_dim")
    m = near(key, params)
    hint = f" (did you mean {group}.{m}?)" if m else ""
    return ConfigError(f"{group}.{key}={value} is not an option of {group} '{builder}'{hint}; "
                       f"valid options: {', '.join(sorted(params)) or 'none'}")


def _not_a_key(key: str, value: Any, candidates: Sequence[str]) -> ConfigError:
    """``key`` (``a`` or ``a.b``) is not in the schema: the nearest spelling and every valid key."""
    prefix, _, leaf = key.rpartition(".")
    m = near(leaf, candidates)
    hint = f"did you mean {prefix + '.' if prefix else ''}{m}? " if m else ""
    under = f" of {prefix}" if prefix else ""
    return ConfigError(f"{key}={value} is not a config key; {hint}valid keys{under}: {', '.join(sorted(candidates))}")


def check_group(group: str, section: Dict[str, Any]) -> None:
    """``group.name`` is registered (or ``group._target_`` importable) and
    every other key is an option of its builder, of the annotated type."""
    name, fn, skip = _section_builder(group, section)
    if target_of(section) is not None and section.get("name") is not None:
        # the options the default choice's YAML brought along do not apply to the target
        try:
            named = set(_signature_options(_builder(group, str(section["name"]))[0], _SKIP[group])[0])
        except (ValueError, ConfigError):
            named = set()
        own = set(_signature_options(fn, skip)[0])
        for key in [k for k in options(section) if k in named and k not in own]:
            del section[key]
    params, open_, hints = _signature_options(fn, skip)
    drops_none = group in ("dataset", "partition")  # null = the builder's default
    for key, value in options(section).items():
        if key not in params:
            if open_:
                continue
            raise _not_an_option(group, name, key, repr(value), list(params))
        hint_t = hints.get(key, params[key].annotation)
        if value is None and (drops_none or params[key].default is None):
            continue
        if not _conforms(value, hint_t):
            raise ConfigError(f"{group}.{key}={value!r} is not allowed; it must be {_type_name(hint_t)}")


# --------------------------------------------------------------------------- fixed sections
def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; {allowed}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_fixed(cfg: Config) -> None:
    _need(cfg.num_clients >= 1, "num_clients", cfg.num_clients, "it must be an integer >= 1")
    _need(cfg.rounds >= 1, "rounds", cfg.rounds, "it must be an integer >= 1")
    _need(0.0 <= cfg.val_fraction < 1.0, "val_fraction", cfg.val_fraction, "it must be in [0, 1)")
    _need(0.0 <= cfg.server_holdout < 1.0, "server_holdout", cfg.server_holdout, "it must be in [0, 1)")
    _need(cfg.torch_threads is None or cfg.torch_threads >= 1, "torch_threads", cfg.torch_threads,
          "it must be >= 1 or null (torch's default)")
    dev = cfg.device
    _need(dev in ("cpu", "auto") or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()),
          "device", dev, "use cpu, cuda, cuda:<i> or auto")
    t = cfg.train
    _need(t.steps >= 0, "train.steps", t.steps, "it must be >= 0 (0 = train train.epochs epochs)")
    _need(t.epochs >= 1 or t.steps > 0, "train.epochs", t.epochs, "it must be >= 1 (or set train.steps > 0)")
    _need(t.batch_size >= 1, "train.batch_size", t.batch_size, "it must be >= 1")
    _need(_finite(t.lr) and t.lr > 0, "train.lr", t.lr, "it must be a finite number > 0")
    _need(_finite(t.lr_decay) and 0 < t.lr_decay <= 1, "train.lr_decay", t.lr_decay,
          "it must be in (0, 1] (1 = constant learning rate)")
    _need(t.lr_decay_every >= 1, "train.lr_decay_every", t.lr_decay_every, "it must be an integer >= 1 (rounds between decays)")
    from .task.train import OPTIMIZERS

    _need(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"valid choices: {', '.join(OPTIMIZERS)}")
    _need(_finite(t.momentum) and 0.0 <= t.momentum < 1.0, "train.momentum", t.momentum, "it must be in [0, 1)")
    _need(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "it must be >= 0")
    _need(_finite(t.proximal_mu) and t.proximal_mu >= 0, "train.proximal_mu", t.proximal_mu, "it must be >= 0")
    s = cfg.server
    _need(s.round_timeout is None or s.round_timeout > 0, "server.round_timeout", s.round_timeout,
          "it must be > 0 seconds or null (wait for all replies)")
    _need(s.connect_timeout > 0, "server.connect_timeout", s.connect_timeout, "it must be > 0 seconds")
    v = cfg.validation.max_update_norm
    _need(v is None or v > 0, "validation.max_update_norm", v, "it must be > 0 or null (no norm check)")
    _need(cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every,
          "it must be >= 0 (0 = never, k = every k rounds)")
    _need(cfg.eval.every >= 0, "eval.every", cfg.eval.every, "it must be >= 0 (0 = never, k = every k rounds)")
    if cfg.eval.every and not cfg.val_fraction:
        raise ConfigError(f"eval.every={cfg.eval.every} is not allowed with val_fraction={cfg.val_fraction}: clients "
                          "hold no validation split, so they would be scored on their own training data; set "
                          "val_fraction (e.g. val_fraction=0.2) or eval.every=0")
    _need(cfg.server.max_failed_rounds >= 0, "server.max_failed_rounds", cfg.server.max_failed_rounds,
          "it must be >= 0 (0 = never stop for failed rounds)")
    check_runtime(cfg.runtime)
    check_dp(cfg.dp)
    from .dp import problem

    why = problem(cfg)
    if why:
        raise ConfigError(why)


def check_runtime(rt: RuntimeConfig) -> None:
    from .runtime import available as runtimes

    _need(rt.name in runtimes(), "runtime.name", rt.name, f"valid choices: {', '.join(runtimes())}")
    n = cores()
    _need(0 < rt.num_cpus_per_client <= n, "runtime.num_cpus_per_client", rt.num_cpus_per_client,
          f"it must be in (0, {n}] (this machine's CPU count)")
    _need(0 <= rt.num_gpus_per_client <= 1, "runtime.num_gpus_per_client", rt.num_gpus_per_client,
          "it must be in [0, 1]")
    _need(rt.num_cpus is None or rt.num_cpus >= 1, "runtime.num_cpus", rt.num_cpus,
          "it must be >= 1 or null (all cores)")
    _need(rt.num_gpus is None or rt.num_gpus >= 0, "runtime.num_gpus", rt.num_gpus, "it must be >= 0 or null")
    if rt.num_cpus is not None and rt.address is None:
        _need(rt.num_cpus_per_client <= rt.num_cpus, "runtime.num_cpus_per_client", rt.num_cpus_per_client,
              f"it must be <= runtime.num_cpus={rt.num_cpus} (a client needing more CPUs than Ray has never runs)")
    _need(rt.num_workers is None or rt.num_workers >= 1, "runtime.num_workers", rt.num_workers,
          "it must be >= 1 or null (= cores / num_cpus_per_client)")
    bs = rt.batch_size
    _need(bs == "auto" or (isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1), "runtime.batch_size", bs,
          "it must be an integer >= 1 or auto")
    _need(rt.vectorize in ("auto", "true", "false", True, False), "runtime.vectorize", rt.vectorize,
          "use auto, true or false")
    _need(rt.cohort_chunk >= 1, "runtime.cohort_chunk", rt.cohort_chunk, "it must be an integer >= 1")
    _need(rt.state_memory_mb > 0, "runtime.state_memory_mb", rt.state_memory_mb,
          "it must be > 0 (MB of client states kept in memory; more spill to the run folder)")
    _need(rt.max_retries >= 0, "runtime.max_retries", rt.max_retries, "it must be >= 0")
    _need(rt.connect_timeout > 0, "runtime.connect_timeout", rt.connect_timeout, "it must be > 0 seconds")
    _need(rt.start_timeout > 0, "runtime.start_timeout", rt.start_timeout, "it must be > 0 seconds")
    if rt.num_gpus_per_client > 0:
        import torch

        _need(torch.cuda.is_available(), "runtime.num_gpus_per_client", rt.num_gpus_per_client,
              "this machine has no CUDA GPU; set runtime.num_gpus_per_client=0")


def check_values(cfg: Config, deployment: bool = False) -> None:
    """Group options whose range is known without data: noise, heterogeneity,
    files named by a path option, the device."""
    from .data.federated import NoiseSpec

    try:
        NoiseSpec.from_spec({f"noise.{k}": v for k, v in cfg.noise.items()})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from .env.heterogeneity import build_heterogeneity

    try:
        build_heterogeneity(cfg.heterogeneity["name"], cfg.num_clients, cfg.seed, **options(cfg.heterogeneity))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_devices(cfg, deployment)
    from .report.loggers import check_logger

    check_logger(cfg.logger)
    local = cfg.dataset.get("name") == "local" and not target_of(cfg.dataset)
    for key, file_only in (("participation.path", True), ("dataset.path", local), ("dataset.test_path", local)):
        group, opt = key.split(".")
        path = getattr(cfg, group).get(opt)
        if not (isinstance(path, str) and path):
            continue
        p = Path(path).expanduser()
        if not p.exists():
            raise ConfigError(f"{key}={path!r} does not exist; give the path of an existing file")
        if file_only and p.is_dir():
            what = "a CSV of round,client rows" if group == "participation" else "an .npz, .csv or .parquet file"
            raise ConfigError(f"{key}={path!r} is a directory; give the path of a file ({what})")
    if cfg.device.startswith("cuda"):
        import torch

        _need(torch.cuda.is_available(), "device", cfg.device, "CUDA is not available on this machine; use cpu or auto")


def check_devices(cfg: Config, deployment: bool = False) -> None:
    """The device profile (a trace file is read and checked here) and the round deadline."""
    from .env.clock import DEADLINE_MODES
    from .env.devices import build_device_profile

    s = cfg.server
    _need(s.deadline_s is None or (_finite(s.deadline_s) and s.deadline_s > 0), "server.deadline_s", s.deadline_s,
          "it must be > 0 simulated seconds or null (no deadline)")
    _need(s.deadline_mode in DEADLINE_MODES, "server.deadline_mode", s.deadline_mode,
          f"valid choices: {', '.join(DEADLINE_MODES)}")
    try:
        profile = build_device_profile(cfg.device_profile["name"], cfg.num_clients, cfg.seed,
                                       **options(cfg.device_profile))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(s.deadline_s is None or profile.enabled, "server.deadline_s", s.deadline_s,
          "a deadline needs a device model: pick device_profile=lognormal|tiers|uniform|trace, or set it to null")
    check_async(cfg, profile.enabled, deployment)


# the rules the asynchronous modes run (per mode), and why the others are refused
ASYNC_RULES = {"fedasync": ("fedavg",), "fedbuff": ("fedavg", "feddisco", "fedau"), "fedfix": ("fedavg",)}
ASYNC_MODE_REFUSED = {
    ("feddisco", "fedasync"): "FedAsync applies one update per server step, and FedDisco's weight on a single "
                              "update is 1 (use server.mode=fedbuff: FedDisco weights the buffer)",
    ("feddisco", "fedfix"): "FedFix's weights are data shares of the whole federation times the windows a job "
                            "spans, not weights over the window's arrivals (use server.mode=fedbuff)",
    ("fedau", "fedasync"): "FedAsync mixes one update in with server.alpha; FedAU's weights belong to a step of "
                           "several updates (use server.mode=fedbuff)",
    ("fedau", "fedfix"): "FedFix's own weights already correct for how often a client arrives (use "
                         "server.mode=fedbuff)",
}
ASYNC_REFUSED = {
    "fedlaw": "its server step learns the round's aggregation weights on a proxy set from the whole round",
    "fedlaw_swa": "its server step learns the round's aggregation weights on a proxy set from the whole round",
    "gossip": "it keeps one model per node and mixes them over a graph each round; there is no server model",
    "ida": "its weights are inverse distances to the mean of the whole round's models",
    **{name: "its update direction is built from a synchronous round's participants (FedAU's baselines); not "
       "implemented asynchronously" for name in ("known_prob", "avg_participating", "avg_all", "fedvarp", "mifa")},
}


def async_sizes(cfg: Config) -> tuple[int, int]:
    """(concurrency, buffer_size) with their null defaults resolved."""
    s = cfg.server
    c = min(10, cfg.num_clients) if s.concurrency is None else s.concurrency
    return c, (c + 1) // 2 if s.buffer_size is None else s.buffer_size


def check_async(cfg: Config, clock: bool, deployment: bool = False) -> None:
    """``server.mode`` and its keys; the asynchronous modes' refusals (docs/algorithms.md). ``deployment``:
    the run is on a SuperLink (fedagg.deploy_app), where the asynchronous modes run on real time."""
    from .aggregators.asynchronous import STALENESS
    from .env.events import MODES

    s = cfg.server
    _need(s.mode in MODES, "server.mode", s.mode, f"valid choices: {', '.join(MODES)}")
    if s.mode == "sync":
        return
    n = cfg.num_clients
    concurrency, buffer_size = async_sizes(cfg)
    _need(1 <= concurrency <= n, "server.concurrency", concurrency,
          f"it must be an integer in 1..num_clients ({n}): the clients in flight at once")
    _need(1 <= buffer_size <= n, "server.buffer_size", buffer_size,
          f"it must be an integer in 1..num_clients ({n}): the updates per fedbuff server step")
    _need(s.mode != "fedfix" or (s.window_s is not None and _finite(s.window_s) and s.window_s > 0), "server.window_s", s.window_s,
          "server.mode=fedfix needs a window > 0 seconds (simulated; real seconds in a deployment), e.g. "
          "server.window_s=5")
    _need(_finite(s.alpha) and 0 < s.alpha <= 1, "server.alpha", s.alpha, "it must be in (0, 1]")
    _need(s.staleness in STALENESS, "server.staleness", s.staleness, f"valid choices: {', '.join(STALENESS)}")
    _need(_finite(s.staleness_a) and s.staleness_a >= 0, "server.staleness_a", s.staleness_a, "it must be >= 0")
    _need(_finite(s.staleness_b) and s.staleness_b >= 0, "server.staleness_b", s.staleness_b, "it must be >= 0")
    mode = f"server.mode={s.mode}"
    if deployment:  # real SuperNodes, real time (fedagg.flower.realtime_loop)
        _need(not clock, "device_profile", cfg.device_profile.get("name"), f"in a deployment {mode} runs on real "
              "time, in the order the replies arrive (the virtual clock is simulation-only): use device_profile=none")
        _need(not cfg.checkpoint.every, "checkpoint.every", cfg.checkpoint.every, f"{mode} in a deployment keeps "
              "no checkpoint (the jobs in flight on the SuperNodes cannot be resumed): set checkpoint.every=0")
        _need(not cfg.resume, "resume", cfg.resume, f"{mode} in a deployment cannot be resumed (the jobs in "
              "flight on the SuperNodes are lost); start a new run")
    else:
        _need(clock, "server.mode", s.mode, "the asynchronous modes run on the virtual clock: pick "
              "device_profile=lognormal|tiers|uniform|trace")
    name = str(cfg.aggregator.get("name"))
    if target_of(cfg.aggregator) or name not in ASYNC_RULES[s.mode]:
        why = ASYNC_MODE_REFUSED.get((name, s.mode)) or ASYNC_REFUSED.get(
            name, "it is not one of the rules written for asynchronous updates")
        raise ConfigError(f"aggregator={name} does not run with {mode}: {why}; {mode} runs "
                          f"{', '.join(ASYNC_RULES[s.mode])} (or use server.mode=sync)")
    if s.mode == "fedasync":
        opt = {k: cfg.aggregator.get(k) for k in ("server_opt", "server_lr", "server_momentum")}
        _need(opt["server_opt"] in (None, "sgd") and opt["server_lr"] in (None, 1, 1.0)
              and not opt["server_momentum"], "aggregator.server_opt", opt["server_opt"],
              f"{mode} mixes each update in with server.alpha; it takes no server optimiser (keep sgd, "
              "server_lr=1, server_momentum=0)")
    _need(s.deadline_s is None, "server.deadline_s", s.deadline_s, f"{mode} has no rounds to cut; set it to null")
    _need(cfg.participation.get("name") == "full", "participation", cfg.participation.get("name"),
          f"{mode} picks its clients itself (the seeded async-dispatch stream): use participation=full")
    _need(cfg.dp.mode == "none", "dp.mode", cfg.dp.mode, f"Flower's DP wrappers run synchronous rounds; {mode} "
          "needs dp.mode=none")
    _need(not cfg.eval.every, "eval.every", cfg.eval.every, f"client-side evaluation is per round; with {mode} "
          "set eval.every=0 (the server model is scored after every update)")
    _need(cfg.runtime.name != "flower", "runtime", cfg.runtime.name, f"{mode} runs in simulation "
          "(runtime=ray|inprocess) or on a real SuperLink (fedagg.deploy_app, on real time), not in Flower's "
          "simulation engine")


# --------------------------------------------------------------------------- load
def _unknown_keys(cfg: Any) -> None:
    """Keys added with ``+key=...`` that the schema does not have."""
    from omegaconf import DictConfig

    if not isinstance(cfg, DictConfig):
        return
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for key in cfg.keys():
        key = str(key)
        if key == "hydra":
            continue
        if key not in sections:
            node = cfg._get_node(key)  # noqa: SLF001 - the raw value, without resolving interpolations
            value = node._value() if node is not None else "?"  # noqa: SLF001
            raise _not_a_key(key, value, list(sections))


def to_config(cfg: Any) -> Config:
    """A composed DictConfig (or a Config) as the typed :class:`Config`, unchecked."""
    if isinstance(cfg, Config):
        return cfg
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    _unknown_keys(cfg)
    try:
        if isinstance(cfg, DictConfig):
            merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        else:
            merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(dict(cfg)))
        obj = OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} is required (it is ??? in the config); set {e.full_key}=...") from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {msg}") from None
    assert isinstance(obj, Config)
    return obj


def validate(cfg: Config, deployment: bool = False) -> None:
    """Every check that needs no data: fixed sections, then each group's
    builder options, then group values whose range is known."""
    check_fixed(cfg)
    for group in GROUPS:
        if group != "noise":  # noise has no builder: its keys are checked by NoiseSpec below
            check_group(group, getattr(cfg, group))
    check_rule_training(cfg)
    check_values(cfg, deployment)


def check_rule_training(cfg: Config) -> None:
    """A rule whose server step reads the clients' SGD (``needs_sgd_clients``: FedNova's a_i) refuses
    an Adam client optimiser and a FedProx term."""
    _, cls, _ = _section_builder("aggregator", cfg.aggregator)
    if not getattr(cls, "needs_sgd_clients", False):
        return
    rule = f"aggregator={target_of(cfg.aggregator) or cfg.aggregator.get('name')}"
    t = cfg.train
    _need(t.optimizer == "sgd", "train.optimizer", t.optimizer,
          f"{rule} normalises by SGD's effective step count; use train.optimizer=sgd")
    _need(t.proximal_mu == 0, "train.proximal_mu", t.proximal_mu,
          f"{rule} normalises by plain (momentum) SGD's step count, without a FedProx term; set train.proximal_mu=0")


def load(cfg: Any, deployment: bool = False) -> Config:
    """The one step from a composed config to the typed, checked :class:`Config` (``deployment``: for the
    SuperLink app, :mod:`fedagg.deploy_app`)."""
    obj = to_config(cfg)
    validate(obj, deployment)
    return obj


def compose(overrides: Sequence[str] = (), config_dir: str | None = None, deployment: bool = False) -> Config:
    """Compose conf/config.yaml with Hydra overrides and :func:`load` it
    (for ServerApps and scripts that run without the CLI)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir or CONF_DIR, version_base=None):
            raw = hcompose("config", overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    return load(raw, deployment)


def one_line(e: BaseException) -> str:
    """A Hydra / OmegaConf error as one line."""
    parts = [str(e)]
    cause = e.__cause__
    if cause is not None and str(cause) not in parts[0]:
        parts.append(str(cause))
    lines: list[str] = []
    for p in parts:
        for line in p.splitlines():
            line = line.strip()
            if line.startswith("Config search path"):
                break
            if not line or line.startswith(("full_key:", "object_type", "reference_type", "Set the environment")):
                continue
            lines.append(line)
    text = " ".join(lines).replace("\t", " ")
    m = re.search(r"Could not override '([^']+)'\. To append to your config use \+\S+ (Key '[^']+' (is )?not in \S+)", text)
    if m:  # an unknown key: Hydra's hint (add it with +) is right only for a builder option its YAML does not list
        key = m.group(1)
        v = re.search(r"To append to your config use \+[^=\s]+=(\S*)", text)
        text = _unknown_override(e, key, v.group(1) if v else "...") or (
            f"'{key}' is not a config key; check its spelling (fedagg --cfg job lists every key)")
    return text


def _unknown_override(e: BaseException, key: str, value: str) -> str | None:
    """What to say about an override of a key the composed config lacks: the builder option it was most likely meant
    to be (``partition.alpah`` -> ``partition.alpha``), Hydra's ``+key=...`` when the builder does take it, or the
    nearest fixed key (``num_client`` -> ``num_clients``). None: nothing better than Hydra's words."""
    node = getattr(e.__cause__, "parent_node", None)
    if node is None or not hasattr(node, "keys"):
        return None
    group, _, leaf = key.partition(".")
    try:
        if group in GROUPS and group != "noise" and leaf and "." not in leaf:  # noise: no builder, keys as listed
            section = {k: node.get(k) for k in ("name", "_target_") if k in node}
            builder, fn, skip = _section_builder(group, section)
            params, open_, _ = _signature_options(fn, skip)
            if open_ or leaf in params:
                return (f"'{key}' is not set by this {group} choice; to pass it as an option of {group} '{builder}' "
                        f"(checked against its signature) write +{key}={value}")
            return str(_not_an_option(group, builder, leaf, value, list(params)))
        return str(_not_a_key(key, value, [str(k) for k in node.keys() if str(k) != "hydra"]))
    except Exception:  # noqa: BLE001 - an error while explaining an error: keep Hydra's words
        return None
