"""The fedagg ClientApp: trains (and evaluates) the configured model on this node's shard.

Everything the client needs arrives in one typed record, the
:class:`ClientInstruction` in the message's ConfigRecord: the data spec
(dataset, partition, seed -- the shard is rebuilt and cached once per
process), the model spec, the training options, the seed, the device, the
round and the simulation's plan for this client in this round (epochs,
partial work, injected faults). The partition id comes from the node config
(``partition-id``), as in Flower simulation and ``flower-supernode
--node-config``; ``data-path`` in the node config replaces the shard by a
local file. ``slowdown-s`` in the node config (``flower-supernode
--node-config "partition-id=2 slowdown-s=3"``) makes the ``train`` handler
sleep that many seconds after training, before it replies: a knob for tests
and benchmarks of the asynchronous modes in a deployment (a deliberately
slow node), never a model of a device (that is the simulation's
``device_profile``).

Handlers: ``query`` (the client's id, example count and label histogram),
``train`` (local training; replies ``arrays`` and ``metrics`` with
``num-examples``, ``train-loss``, ``partition-id``, ``label-hist``),
``train.chunk`` (a chunk of clients in one message, from fedagg's simulation
grids: trained stacked -- :mod:`fedagg.task.cohort` -- where the grid asks for
it and the model allows it, else one by one; one reply for the chunk, see
:mod:`fedagg.flower.chunk`) and ``evaluate`` (the received model on the
client's validation split -- ``val_fraction`` -- or on its training split if it
has none; replies ``num-examples``, ``loss``, ``accuracy``).

What a client does in a round is written once, in :func:`_train_clients`: the
single-client ``train`` handler is the chunk of one.

``app`` is the ClientApp every runtime uses; :func:`for_dp_mode` picks the one
for a run's ``dp.mode``: ``client_fixed`` and ``client_adaptive`` runs use the
same handlers with Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``
around the per-client ``train`` handler (they clip the reply's update to the
``clipping_norm`` that Flower's client-side DP wrapper puts in the message's
config; not around the other handlers, whose messages carry no clipping norm).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import Mod

from ..data.federated import ClientData, federated_data
from ..task import correction as corr_terms
from ..task.cohort import Member, log_fallback_once, train_cohort, unsupported_reason
from ..task.contrastive import UNSTACKED
from ..task.models import build_model
from ..task.train import evaluate as evaluate_model
from ..task.train import get_params, set_params, train_local
from . import chunk
from .client_state import CLIENT_STATE, RULE_REPLY, RULE_SERVER, carried_state, context_state, keep_in_context
from .codec import params_to_record, record_to_params
from .protocol import (
    ACCURACY,
    ARRAYS,
    CONFIG,
    DATA_PATH,
    LABEL_HIST,
    LOSS,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    SLOWDOWN,
    ClientInstruction,
    ModelSpec,
    SimPlan,
    train_metrics,
    train_reply,
)


class InjectedFault(RuntimeError):
    """A fault the simulation injected on purpose (crash, dropout, deadline)."""


_MODELS: dict[str, torch.nn.Module] = {}


def _model(spec: ModelSpec) -> torch.nn.Module:
    """One model object per spec and process (its parameters are overwritten per message)."""
    key = spec.key()
    if key not in _MODELS:
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = build_model(spec.name, spec.input_shape, spec.num_classes, **dict(spec.options))
    return _MODELS[key]


def _partition_id(context: Context, instr: ClientInstruction) -> int:
    if PARTITION_ID not in context.node_config:
        raise ValueError(f"node config has no '{PARTITION_ID}'; start the SuperNode with --node-config "
                         f"'{PARTITION_ID}=<i> num-partitions=<N>'")
    return _check_pid(int(context.node_config[PARTITION_ID]), instr)


def _check_pid(pid: int, instr: ClientInstruction) -> int:
    n = instr.num_clients
    if not 0 <= pid < n:
        raise ValueError(f"{PARTITION_ID}={pid} is out of range 0..{n - 1} (num_clients={n})")
    return pid


@lru_cache(maxsize=2)
def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x_train" not in d or "y_train" not in d:
                raise ValueError(f"node config data-path={path}: the npz needs arrays x_train and y_train; has {sorted(d)}")
            return d["x_train"], d["y_train"]
    except FileNotFoundError:
        raise ValueError(f"node config data-path={path} does not exist on this SuperNode") from None


def _client_data(context: Context, instr: ClientInstruction, pid: int) -> tuple[ClientData, int]:
    """This node's data and the number of classes. With node config
    ``data-path`` (a local .npz with x_train/y_train, shaped like the
    experiment's dataset) the node trains on that file instead of its shard
    of the spec's dataset; otherwise the shard ``partition-id``."""
    path = context.node_config.get(DATA_PATH)
    if not path:
        fd = federated_data(instr.data_key)
        return fd.client(pid), fd.num_classes
    shape, k = instr.model.input_shape, instr.model.num_classes
    x, y = _load_npz(str(path))
    if len(x) != len(y) or len(y) == 0 or int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise ValueError(f"data-path={path}: x_train {x.shape} / y_train {y.shape} do not match input shape {shape}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"data-path={path}: labels must be in 0..{k - 1}, got {y.min()}..{y.max()}")
    x = x.astype(np.float32).reshape(len(y), *shape)
    return ClientData(x, y, x[:0], y[:0]), k


def _device(instr: ClientInstruction) -> str:
    want = instr.device
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={want} requested but CUDA is not available on this node")
    return want


def _hist(y: np.ndarray, k: int) -> list[int]:
    return [int(c) for c in np.bincount(y, minlength=k)]


def query(msg: Message, context: Context) -> Message:
    """Report the stable client id, example count and label histogram."""
    instr = ClientInstruction.decode(msg.content[CONFIG])
    pid = _partition_id(context, instr)
    data, k = _client_data(context, instr, pid)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(data.y_train), LABEL_HIST: _hist(data.y_train, k)})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


# --------------------------------------------------------------------------- a client's work in a round
@dataclass(frozen=True)
class _Client:
    """One client of a chunk: its instruction, its id and the model it was sent."""

    instr: ClientInstruction
    pid: int
    arrays: ArrayRecord
    server: ArrayRecord | None = None  # the rule's server arrays (RULE_SERVER), for instructions with terms
    state: ArrayRecord | None = None  # the state the grid carried (None: the node's Context keeps it)


_UNSTACKABLE: dict[tuple[str, str], str | None] = {}  # (model spec key, optimizer) -> unsupported_reason


def _stackable(clients: Sequence[_Client]) -> str | None:
    """Why these clients cannot train as one stacked model (None: they can)."""
    first = clients[0].instr
    if (first.terms or {}).get("rule") == "moon":
        return UNSTACKED
    key = (first.model.key(), first.train.optimizer)
    if key not in _UNSTACKABLE:
        _UNSTACKABLE[key] = unsupported_reason(_model(first.model), optimizer=first.train.optimizer,
                                               input_shape=first.model.input_shape)
    reason = _UNSTACKABLE[key]
    if reason is None:  # the round may differ (the asynchronous modes stack model versions), the learning rate not
        same = replace(first, plan=SimPlan(), round=0)
        others = {id(c.instr): c.instr for c in clients[1:] if c.instr is not first}  # shared decodings compared once
        if any(replace(i, plan=SimPlan(), round=0) != same or i.lr != first.lr for i in others.values()):
            reason = "the chunk's clients have different training setups"
    return reason


def _train_clients(clients: Sequence[_Client], context: Context, stacked: bool = False,
                   ) -> list[chunk.Trained | BaseException]:
    """What each client does in a round: its fault, its shard, its planned work
    (:meth:`ClientInstruction.work`), training, its reply's values -- or the exception
    that stands for its failure, in order. ``stacked``: train them as one stacked
    model where the model allows it; else one by one."""
    if stacked and clients:
        reason = _stackable(clients)
        if reason:
            log_fallback_once(reason)
            stacked = False
    outcomes: list[chunk.Trained | BaseException | None] = [None] * len(clients)
    decoded: dict[int, dict[str, np.ndarray]] = {}  # id(ArrayRecord) -> params: a shared model is decoded once
    members: list[tuple[int, Member, int, np.ndarray]] = []
    for j, c in enumerate(clients):
        instr, pid = c.instr, c.pid
        try:
            if instr.plan.fault == "crash":
                raise InjectedFault(f"client {pid}: injected crash (heterogeneity=crashes)")
            data, k = _client_data(context, instr, pid)
            work = instr.work(len(data.y_train))
            if id(c.arrays) not in decoded:
                decoded[id(c.arrays)] = record_to_params(c.arrays)
            params = decoded[id(c.arrays)]
            corr = _correction(c, params, context, decoded)
            hist = np.bincount(data.y_train, minlength=k)
            if stacked:
                if not work.replies:  # its work would be discarded: not trained (only its step count is said)
                    raise _fault(pid, work.fault, work.steps)
                members.append((j, Member(pid, data.x_train, data.y_train, params, epochs=instr.epochs,
                                          steps=instr.train.steps, work_fraction=work.work_fraction,
                                          correction=corr, round=instr.round),
                                len(data.y_train), hist))
                continue
            opts = instr.train
            model = _model(instr.model)
            set_params(model, params)
            lr = instr.lr
            # a dropout trains half the round, then disappears; a straggler does part of it
            res = train_local(
                model, data.x_train, data.y_train,
                epochs=instr.epochs, steps=opts.steps,
                batch_size=opts.batch_size, lr=lr,
                optimizer=opts.optimizer, momentum=opts.momentum,
                weight_decay=opts.weight_decay + (corr.extra_wd if corr is not None else 0.0),
                proximal_mu=opts.proximal_mu, work_fraction=work.work_fraction, seed=instr.seed, round=instr.round,
                client=pid, device=_device(instr), correction=corr,
            )
            if not work.replies:
                raise _fault(pid, work.fault, res.steps)
            trained = get_params(model)
            extras, state = _finish(corr, params, trained, int(res.steps), lr)
            outcomes[j] = chunk.Trained(pid, trained, len(data.y_train), float(res.loss),
                                        float(res.accuracy), int(res.steps), hist, extras, state)
        except Exception as e:  # noqa: BLE001 - a failing client is its failure, the chunk goes on
            outcomes[j] = e
    if members:
        first = clients[members[0][0]].instr
        opts = first.train
        lr = first.lr  # the chunk's clients share it (_stackable)
        lead = members[0][1].correction
        extra_wd = lead.extra_wd if lead is not None else 0.0  # FedDyn's alpha (the chunk's clients share it)
        try:
            results = train_cohort(
                _model(first.model), [m for _, m, _, _ in members], batch_size=opts.batch_size,
                lr=lr, momentum=opts.momentum,
                weight_decay=opts.weight_decay + (extra_wd or 0.0), proximal_mu=opts.proximal_mu, seed=first.seed,
                round=first.round,
                device=_device(first),
            )
            for (j, m, n, hist), (params, res) in zip(members, results):
                extras, state = _finish(m.correction, m.params, params, int(res.steps), lr)
                outcomes[j] = chunk.Trained(m.client, params, n, float(res.loss), float(res.accuracy),
                                            int(res.steps), hist, extras, state)
        except Exception as e:  # noqa: BLE001 - the whole cohort failed: each client gets the error
            for j, *_ in members:
                outcomes[j] = e
    return [o for o in outcomes if o is not None]  # type: ignore[misc]


def _correction(c: _Client, params: dict[str, np.ndarray], context: Context,
                decoded: dict[int, dict[str, np.ndarray]]) -> corr_terms.Correction | None:
    """The rule's client-side term for client ``c`` this round (None: the instruction has none).
    Its state: the one the grid carried, else the node's Context (deployment); none yet: zeros."""
    terms = c.instr.terms
    if not terms:
        return None
    server: dict[str, np.ndarray] = {}  # none sent: a term that needs no server arrays (FedAvg-M with beta = 1)
    if c.server is not None:
        if id(c.server) not in decoded:
            decoded[id(c.server)] = record_to_params(c.server)
        server = decoded[id(c.server)]
    state = record_to_params(c.state) if c.state is not None else context_state(context)
    names = tuple(n for n, _ in _model(c.instr.model).named_parameters())
    return corr_terms.build(terms, server, state, params, names)


def _finish(corr: corr_terms.Correction | None, start: dict[str, np.ndarray], trained: dict[str, np.ndarray],
            steps: int, lr: float) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
    """(the reply's rule arrays, the client's new state) -- (None, None) without a term."""
    if corr is None:
        return None, None
    state, extras = corr_terms.finish(corr, start, trained, steps, lr)
    return extras, state


def _fault(pid: int, fault: str | None, steps: int) -> InjectedFault:
    if fault == "dropout":
        return InjectedFault(f"client {pid}: dropped out mid-round after {steps} steps")
    return InjectedFault(f"client {pid}: straggler missed the round deadline")


def train(msg: Message, context: Context) -> Message:
    """One client: the chunk of one."""
    instr = ClientInstruction.decode(msg.content[CONFIG])
    recs = msg.content.array_records
    carried = carried_state(msg)
    client = _Client(instr, _partition_id(context, instr), recs[ARRAYS], recs.get(RULE_SERVER), carried)
    (out,) = _train_clients([client], context)
    if isinstance(out, BaseException):
        raise out
    reply = train_reply(msg, out.params, train_metrics(out.pid, out.num_examples, out.loss, out.accuracy, out.steps,
                                                       out.label_hist))
    if out.extras is not None:
        reply.content[RULE_REPLY] = params_to_record(out.extras)
    if out.state is not None:
        if carried is not None:  # a simulation grid keeps this client's state: it goes back with the reply
            reply.content[CLIENT_STATE] = params_to_record(out.state)
        else:  # a SuperNode keeps its own, in its Context
            keep_in_context(context, out.state)
    _slow_down(context)
    return reply


def _slow_down(context: Context) -> None:
    """``slowdown-s`` in the node config: sleep that long before replying (a deliberately slow node)."""
    raw = context.node_config.get(SLOWDOWN)
    if raw is None:
        return
    secs = float(raw)
    if not (secs >= 0 and np.isfinite(secs)):
        raise ValueError(f"node config {SLOWDOWN}={raw!r}: give a number of seconds >= 0")
    time.sleep(secs)


def train_chunk(msg: Message, context: Context) -> Message:
    """A chunk of clients (fedagg's simulation grids): one reply for all of them."""
    req = chunk.read(msg)
    clients: list[_Client] = []
    outcomes: list[chunk.Trained | BaseException | None] = []
    for raw, pid, rec, extra in zip(req.instructions, req.partition_ids, req.arrays, req.extras):
        try:
            instr = ClientInstruction.decode({chunk.INSTRUCTION: raw})
            # a chunk's clients are virtual: their state travels with them (none carried: the initial state)
            clients.append(_Client(instr, _check_pid(pid, instr), rec, extra.get(RULE_SERVER),
                                   extra.get(CLIENT_STATE, ArrayRecord())))
            outcomes.append(None)
        except Exception as e:  # noqa: BLE001 - this client fails, the chunk goes on
            outcomes.append(e)
    it = iter(_train_clients(clients, context, req.stacked))
    return chunk.reply(msg, req.message_ids, [o if o is not None else next(it) for o in outcomes])


def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on this client's validation split (its training split if it has none)."""
    instr = ClientInstruction.decode(msg.content[CONFIG])
    pid = _partition_id(context, instr)
    data, _ = _client_data(context, instr, pid)
    x, y = (data.x_val, data.y_val) if len(data.y_val) else (data.x_train, data.y_train)
    model = _model(instr.model)
    set_params(model, record_to_params(msg.content.array_records[ARRAYS]))
    loss, acc = evaluate_model(model, x, y)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(y), LOSS: float(loss), ACCURACY: float(acc)})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


def _client_app(*train_mods: Mod) -> ClientApp:
    """fedagg's handlers in one ClientApp; ``train_mods`` wrap the per-client ``train`` handler."""
    client_app = ClientApp()
    client_app.query()(query)
    client_app.train(mods=list(train_mods))(train)
    client_app.train(chunk.ROUTE)(train_chunk)
    client_app.evaluate()(evaluate)
    return client_app


app = _client_app()
_APPS = {"client_fixed": _client_app(fixedclipping_mod), "client_adaptive": _client_app(adaptiveclipping_mod)}


def for_dp_mode(mode: str) -> ClientApp:
    """The ClientApp for ``dp.mode=mode``: Flower's clipping mod for the client-side modes, else ``app``."""
    return _APPS.get(mode, app)
