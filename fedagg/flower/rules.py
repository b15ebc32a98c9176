"""``strategy_for(name, **options)``: any fedagg rule as a Flower strategy for
your own ServerApp.

``name`` is a registered rule (``fedavg``, ``fedau``, ``feddisco``, ``ida``,
``fedlaw``, ``gossip``, ``mifa``, ...) or one of fedagg's presets (the files
``aggregator/<name>.yaml`` of its config, e.g. ``fedau_k50`` = ``fedau`` with
``K=50``, ``intrac`` = ``ida`` with ``variant=intrac``) or the dotted path
of a user's own ``Aggregator`` subclass (``my_pkg.rules.MyRule``). Keyword
options are Flower's own strategy options (``fraction_train``, ...) and the
rule's; any other is refused when the strategy is built.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from .. import aggregators
from ..aggregators.base import Aggregator, AggregatorContext, InitParamsFn, ModelFn
from .options import FlowerOptions
from .protocol import ClientInstruction
from .strategy import FedaggStrategy

RuleOption = int | float | str | bool | None | Sequence[float]


def _conf_dirs() -> list[Path]:
    pkg = Path(aggregators.__file__).resolve().parent.parent
    return [pkg / "conf", pkg.parent / "conf"]


def presets() -> dict[str, dict[str, RuleOption]]:
    """fedagg's named aggregator presets: file stem -> options (incl. ``name``)."""
    out: dict[str, dict[str, RuleOption]] = {}
    for d in _conf_dirs():
        for f in sorted((d / "aggregator").glob("*.yaml")):
            data = OmegaConf.to_container(OmegaConf.load(f))
            if isinstance(data, Mapping) and isinstance(data.get("name"), str):
                out.setdefault(f.stem, {str(k): v for k, v in data.items()})
    return out


def resolve(name: str) -> tuple[type[Aggregator], dict[str, RuleOption]]:
    """The rule class and the preset's options for ``name``."""
    if name in aggregators.available():
        preset = presets().get(name, {})
        base = preset if preset.get("name") == name else {}
        return aggregators.get(name), {k: v for k, v in base.items() if k != "name"}
    p = presets().get(name)
    if p is None and "." in name:  # a user's own rule: pkg.module.Class
        module, _, attr = name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"strategy_for('{name}'): cannot import it ({type(e).__name__}: {e})") from e
        if not (isinstance(obj, type) and issubclass(obj, Aggregator)):
            raise ValueError(f"strategy_for('{name}'): not a subclass of fedagg.aggregators.Aggregator")
        return obj, {}
    if p is None:
        choices = sorted(set(aggregators.available()) | set(presets()))
        raise ValueError(f"strategy_for('{name}'): not a fedagg rule; valid names: {', '.join(choices)}")
    rule = str(p["name"])
    return aggregators.get(rule), {k: v for k, v in p.items() if k != "name"}


def rule_options(cls: type[Aggregator]) -> list[str]:
    """The keyword options ``cls`` takes (its and its bases' ``__init__`` parameters after the context)."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for i, p in enumerate(inspect.signature(init).parameters.values()):
            if i < 2 or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):  # self, ctx, **kw
                continue
            if p.name not in names:
                names.append(p.name)
    return names


def strategy_for(
    name: str,
    *,
    num_clients: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    dataset: str = "",
    model_fn: ModelFn | None = None,
    init_params_fn: InitParamsFn | None = None,
    proxy_data: tuple[np.ndarray, np.ndarray] | None = None,
    oracle_probs: Sequence[float] | np.ndarray | None = None,
    connect_timeout: float = 120.0,
    max_update_norm: float | None = None,
    max_failed_rounds: int = 3,
    instruction: ClientInstruction | None = None,
    **options: Any,
) -> FedaggStrategy:
    """A Flower ``Strategy`` running fedagg's rule ``name``.

    Use it like Flower's own strategies::

        strategy = strategy_for("fedau", K=50, fraction_train=0.5)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=10, train_config=ConfigRecord({"lr": 0.05}))

    ``options`` are Flower's own FedAvg options, with Flower's meaning and
    defaults (``fraction_train``, ``fraction_evaluate``, ``min_train_nodes``,
    ``min_evaluate_nodes``, ``min_available_nodes``, ``weighted_by_key``,
    ``arrayrecord_key``, ``configrecord_key``, ``train_metrics_aggr_fn``,
    ``evaluate_metrics_aggr_fn``: :class:`~fedagg.flower.options.FlowerOptions`),
    and the rule's own (``server_lr``, ``K``, ...); any other name is refused
    here, with the list of accepted ones.

    Clients reply the standard keys (the ArrayRecord; a MetricRecord with
    ``num-examples``, optionally ``train-loss``, ``train-accuracy`` (a
    fraction in [0, 1]), ``label-hist`` and ``partition-id``; every other
    metric is aggregated as Flower does). ``num_clients`` defaults to the nodes
    connected at the start (waiting for ``min_available_nodes``); client ids
    follow the node ids, or the ``partition-id`` a node echoes in its first
    train reply. Rules that read label histograms (feddisco) need
    ``num_classes``. What a rule needs besides the replies is passed here and
    refused when missing: ``proxy_data=(x, y)`` and ``model_fn`` (fedlaw),
    ``oracle_probs`` (known_prob), ``init_params_fn(client_id)`` (gossip with
    independent initial models). ``dataset`` names the data for rules whose
    defaults depend on it (FedLAW's official server learning rate).

    ``fednova`` needs ``rho=`` (the momentum of the clients' torch SGD, 0 for
    plain SGD; they must train with SGD and no proximal term) and, in every
    train reply's MetricRecord, ``steps``: the number of local SGD steps the
    client actually took this round (a positive integer; fedagg's ClientApp
    sends it). A reply without it is rejected with one line saying so (the
    round goes on with the others). ``disco=True`` (``fedavg``, ``fednova``)
    puts FedDisco's weights on top, which needs ``label-hist`` in the replies
    and ``num_classes``.
    ``start`` raises ``fedagg.outcomes.RunFailed`` after ``max_failed_rounds``
    consecutive rounds in which every asked client failed or was rejected
    (0: never). ``instruction`` (a :class:`~fedagg.flower.protocol.ClientInstruction`)
    drives fedagg's own ClientApp (its data, model and training options).

    ``scaffold`` (also SCAFFOLD-M: ``momentum`` < 1) and ``fedavg_m`` need fedagg's ClientApp:
    it applies the correction in local training, keeps each client's control variate in its
    node's ``Context.state`` and replies the control-variate delta and ``lr_steps`` in the
    ``fedagg.rule-reply`` ArrayRecord; a reply without them (any other ClientApp) is rejected
    with a reason that says so. ``feddyn`` (its regulariser, h_k) and ``moon`` (its model-contrastive
    loss; the state is the client's previous local model, and the model must define
    ``represent``) need it the same way, and reply ``lr_steps``.
    """
    cls, preset = resolve(name)
    flower = {k: options.pop(k) for k in FlowerOptions.names() if k in options}
    accepted = rule_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        fedagg_own = [p for p in inspect.signature(strategy_for).parameters if p not in ("name", "options")]
        raise TypeError(
            f"strategy_for('{name}'): unknown option(s) {unknown}; accepted: Flower's {', '.join(FlowerOptions.names())}; "
            f"fedagg's {', '.join(fedagg_own)}; rule '{cls.name}': {', '.join(accepted) or '(none)'}"
        )
    flower_options = FlowerOptions(**flower)
    opts = {**preset, **options}
    missing = [
        arg for arg, need, given in (
            ("proxy_data=(x, y)", cls.needs_proxy, proxy_data),
            ("model_fn", cls.needs_model_fn, model_fn),
            ("oracle_probs", cls.needs_oracle_probs, oracle_probs),
            ("rho=<the clients' SGD momentum, 0 for plain SGD>", cls.needs_sgd_clients and "rho" in accepted,
             opts.get("rho")),
        ) if need and given is None
    ]
    if missing:
        raise ValueError(f"strategy_for('{name}'): rule '{cls.name}' needs {' and '.join(missing)}")
    probs = None if oracle_probs is None else np.asarray(oracle_probs, dtype=np.float64)

    def build(ctx: AggregatorContext) -> Aggregator:
        full = replace(ctx, dataset=dataset, model_fn=model_fn, init_params_fn=init_params_fn, proxy_data=proxy_data,
                       oracle_participation_probs=probs)
        return cls(full.restricted_to(cls), **opts)

    rule: Aggregator | None = None
    if num_clients is not None and num_classes is not None:  # everything known: refuse bad values now
        rule = build(AggregatorContext(num_clients=num_clients, num_classes=num_classes, seed=seed, dataset=dataset))
    return FedaggStrategy(
        rule if rule is not None else build, num_clients=num_clients, num_classes=num_classes, seed=seed,
        options=flower_options, connect_timeout=connect_timeout, max_update_norm=max_update_norm,
        max_failed_rounds=max_failed_rounds, instruction=instruction,
    )
