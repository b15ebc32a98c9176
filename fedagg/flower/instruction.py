"""The one record a fedagg ClientApp receives: :class:`ClientInstruction`.

It says everything a client needs for one message: which data shard to build
(the federated data spec, rebuilt and cached once per process from the
seed), which model, how to train (:class:`TrainOptions`), the seed and
device, the round, and the simulation's plan for this client in this round
(:class:`SimPlan`: fewer epochs, partial work, an injected fault). The
strategy builds it, :meth:`ClientInstruction.encode` puts it in the
message's ConfigRecord under one key, and the ClientApp reads it back with
:meth:`ClientInstruction.decode` -- typed, checked, with no defaults on the
client side (every value comes from the experiment's config).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from flwr.app import ConfigRecord

from ..task.work import WorkPlan, plan_work, round_lr

KEY = "fedagg.instruction"
FAULTS = ("crash", "dropout", "deadline")

JSONScalar = str | int | float | bool | None
JSONValue = JSONScalar | list["JSONValue"] | dict[str, "JSONValue"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build: ``build_model(name, input_shape, num_classes, **options)``."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    options: Mapping[str, JSONValue] = field(default_factory=dict)

    def key(self) -> str:
        """A stable string for caching one built model per spec."""
        return self._key

    @functools.cached_property
    def _key(self) -> str:  # once per spec object: a round's clients share a decoded instruction
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class TrainOptions:
    """Local training (the experiment's ``train`` section). The round's learning
    rate is ``lr * lr_decay ** ((round - 1) // lr_decay_every)``."""

    epochs: int
    steps: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    proximal_mu: float
    optimizer: str
    lr_decay: float
    lr_decay_every: int


@dataclass(frozen=True)
class SimPlan:
    """The simulation's plan for one client in one round (the ``heterogeneity``
    group): ``epochs`` replaces the configured local epochs, ``work_fraction``
    < 1 stops training early (a straggler), ``fault`` injects a failure. The
    empty plan means: do the configured work and reply."""

    epochs: int | None = None
    work_fraction: float = 1.0
    fault: str | None = None

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"SimPlan.fault='{self.fault}' is not one of {', '.join(FAULTS)}")
        if not 0.0 < self.work_fraction <= 1.0:
            raise ValueError(f"SimPlan.work_fraction={self.work_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class ClientInstruction:
    data: Mapping[str, JSONValue]  # the federated data spec (seed, num_clients, val_fraction, dataset/partition/noise)
    model: ModelSpec
    train: TrainOptions
    seed: int
    device: str
    round: int = 0  # 0: not a training round (the id query, evaluation before training)
    plan: SimPlan = field(default_factory=SimPlan)
    # a rule's client-side term (fedagg.task.correction): {"rule": "scaffold", "beta": 1.0}; {}: none
    terms: Mapping[str, JSONValue] = field(default_factory=dict)

    @functools.cached_property
    def data_key(self) -> str:
        """The data spec's cache key (:func:`fedagg.data.federated.spec_key`), computed once per
        instruction object: the clients of a round share a few decoded instructions."""
        from ..data.federated import spec_key

        return spec_key(self.data)

    @property
    def num_clients(self) -> int:
        n = self.data.get("num_clients")
        if not isinstance(n, int):
            raise ValueError(f"instruction data spec has num_clients={n!r}, expected an integer")
        return n

    @property
    def epochs(self) -> int:
        """Local epochs this round: the simulation plan's, else the configured ones."""
        return self.plan.epochs if self.plan.epochs is not None else self.train.epochs

    @property
    def lr(self) -> float:
        """This round's client learning rate (``train.lr`` decayed by the round, :func:`round_lr`)."""
        tr = self.train
        return round_lr(tr.lr, self.round, tr.lr_decay, tr.lr_decay_every)

    def work(self, n: int) -> WorkPlan:
        """This client's work this round, on its shard of ``n`` training examples."""
        tr = self.train
        return plan_work(n, epochs=self.epochs, steps=tr.steps, batch_size=tr.batch_size,
                         work_fraction=self.plan.work_fraction, fault=self.plan.fault)

    def for_client(self, round: int, plan: SimPlan, proximal_mu: float | None = None,
                   terms: Mapping[str, JSONValue] | None = None) -> ClientInstruction:
        """This instruction for one client in one round (``proximal_mu``: a FedProx
        term the aggregator sets, replacing ``train.proximal_mu``; ``terms``: the
        rule's client-side term, :meth:`Aggregator.client_terms`)."""
        train = self.train if proximal_mu is None else replace(self.train, proximal_mu=float(proximal_mu))
        out = replace(self, round=int(round), plan=plan, train=train)
        return out if terms is None else replace(out, terms=dict(terms))

    def encode(self) -> ConfigRecord:
        d = asdict(self)
        if not d["terms"]:  # no term: the record is what it was before terms existed
            d.pop("terms")
        return ConfigRecord({KEY: json.dumps(d, sort_keys=True)})

    @classmethod
    def decode(cls, rec: Mapping[str, object]) -> ClientInstruction:
        """Read the instruction from a message's ConfigRecord; ValueError naming
        what is wrong (e.g. a ServerApp that is not fedagg's sent none)."""
        raw = rec.get(KEY)
        if not isinstance(raw, str):
            raise ValueError(
                f"the message's config has no '{KEY}' record: this ClientApp needs a fedagg strategy "
                "(fedagg.flower.strategy_for) that sends one"
            )
        return _decode(raw)


@functools.lru_cache(maxsize=64)
def _decode(raw: str) -> ClientInstruction:
    """Parse once per distinct record: a round's clients mostly share one (every value is immutable but ``data``,
    which no reader changes)."""
    try:
        d = json.loads(raw)
        m = d["model"]
        return ClientInstruction(
            data=dict(d["data"]),
            model=ModelSpec(str(m["name"]), tuple(int(s) for s in m["input_shape"]), int(m["num_classes"]),
                            dict(m.get("options") or {})),
            train=TrainOptions(**d["train"]),
            seed=int(d["seed"]), device=str(d["device"]), round=int(d["round"]),
            plan=SimPlan(**d["plan"]),
            terms=dict(d.get("terms") or {}),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed '{KEY}' record ({type(e).__name__}: {e})") from e
