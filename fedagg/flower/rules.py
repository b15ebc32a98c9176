"""``strategy_for(name, **options)``: any fedagg rule as a Flower strategy for
your own ServerApp.

``name`` is a registered rule (``fedavg``, ``fedau``, ``feddisco``, ``ida``,
``fedlaw``, ``gossip``, ``mifa``, ...) or one of fedagg's presets (the files
``aggregator/<name>.yaml`` of its config, e.g. ``fedau_k50`` = ``fedau`` with
``K=50``, ``intrac`` = ``ida`` with ``variant=intrac``) or the dotted path
of a user's own ``Aggregator`` subclass (``my_pkg.rules.MyRule``); keyword
options the rule does not take are refused by the rule.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from .. import aggregators
from ..aggregators.base import Aggregator, AggregatorContext, InitParamsFn, ModelFn
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
    fraction_evaluate: float = 1.0,
    min_available_nodes: int = 2,
    connect_timeout: float = 120.0,
    max_update_norm: float | None = None,
    **options: RuleOption,
) -> FedaggStrategy:
    """A Flower ``Strategy`` running fedagg's rule ``name``.

    Use it like Flower's own strategies::

        strategy = strategy_for("fedau", K=50)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=10, train_config=ConfigRecord({"lr": 0.05}))

    Clients reply the standard keys (``arrays``; ``metrics`` with
    ``num-examples``, optionally ``train-loss``, ``train-accuracy`` and
    ``label-hist``). ``num_clients`` defaults to the nodes connected at the
    start (waiting for ``min_available_nodes``), ``num_classes`` to the
    length of the ``label-hist`` the nodes report in a ``query`` reply. What a
    rule needs besides the replies is passed here and refused when missing:
    ``proxy_data=(x, y)`` and ``model_fn`` (fedlaw), ``oracle_probs``
    (known_prob), ``init_params_fn(client_id)`` (gossip with independent
    initial models); rules that read label histograms (feddisco) name the
    client whose reply has none. ``dataset`` names the data for rules whose
    defaults depend on it (FedLAW's official server learning rate).
    """
    cls, preset = resolve(name)
    opts = {**preset, **options}
    missing = [
        arg for arg, need, given in (
            ("proxy_data=(x, y)", cls.needs_proxy, proxy_data),
            ("model_fn", cls.needs_model_fn, model_fn),
            ("oracle_probs", cls.needs_oracle_probs, oracle_probs),
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
    if num_clients is not None and num_classes is not None:  # everything known: refuse bad options now
        rule = build(AggregatorContext(num_clients=num_clients, num_classes=num_classes, seed=seed, dataset=dataset))
    return FedaggStrategy(
        rule if rule is not None else build, num_clients=num_clients, num_classes=num_classes, seed=seed,
        fraction_evaluate=fraction_evaluate, min_available_nodes=min_available_nodes,
        connect_timeout=connect_timeout, max_update_norm=max_update_norm,
    )
