"""The fedagg ClientApp: trains (and evaluates) the configured model on this node's shard.

Everything the client needs arrives in one typed record, the
:class:`ClientInstruction` in the message's ConfigRecord: the data spec
(dataset, partition, seed -- the shard is rebuilt and cached once per
process), the model spec, the training options, the seed, the device, the
round and the simulation's plan for this client in this round (epochs,
partial work, injected faults). The partition id comes from the node config
(``partition-id``), as in Flower simulation and ``flower-supernode
--node-config``; ``data-path`` in the node config replaces the shard by a
local file.

Handlers: ``query`` (the client's id, example count and label histogram),
``train`` (local training; replies ``arrays`` and ``metrics`` with
``num-examples``, ``train-loss``, ``partition-id``, ``label-hist``) and
``evaluate`` (the received model on the client's validation split --
``val_fraction`` -- or on its training split if it has none; replies
``num-examples``, ``loss``, ``accuracy``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..data.federated import ClientData, get_federated_data
from ..task.models import build_model
from ..task.train import evaluate as evaluate_model
from ..task.train import get_params, round_lr, set_params, train_local
from .codec import params_to_record, record_to_params
from .instruction import ClientInstruction, ModelSpec

app = ClientApp()


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
    if "partition-id" not in context.node_config:
        raise ValueError("node config has no 'partition-id'; start the SuperNode with --node-config 'partition-id=<i> num-partitions=<N>'")
    pid = int(context.node_config["partition-id"])
    n = instr.num_clients
    if not 0 <= pid < n:
        raise ValueError(f"partition-id={pid} is out of range 0..{n - 1} (num_clients={n})")
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
    path = context.node_config.get("data-path")
    if not path:
        fd = get_federated_data(instr.data)
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


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the stable client id, example count and label histogram."""
    instr = ClientInstruction.decode(msg.content["config"])
    pid = _partition_id(context, instr)
    data, k = _client_data(context, instr, pid)
    metrics = MetricRecord(
        {"partition-id": pid, "num-examples": len(data.y_train), "label-hist": _hist(data.y_train, k)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    instr = ClientInstruction.decode(msg.content["config"])
    pid = _partition_id(context, instr)
    plan, opts = instr.plan, instr.train
    if plan.fault == "crash":
        raise InjectedFault(f"client {pid}: injected crash (heterogeneity=crashes)")
    data, k = _client_data(context, instr, pid)
    model = _model(instr.model)
    set_params(model, record_to_params(msg.content.array_records["arrays"]))
    # a dropout trains half the round, then disappears; a straggler does part of it
    work = 0.5 if plan.fault == "dropout" else plan.work_fraction
    res = train_local(
        model, data.x_train, data.y_train,
        epochs=instr.epochs, steps=opts.steps,
        batch_size=opts.batch_size, lr=round_lr(opts.lr, instr.round, opts.lr_decay, opts.lr_decay_every),
        optimizer=opts.optimizer, momentum=opts.momentum, weight_decay=opts.weight_decay,
        proximal_mu=opts.proximal_mu, work_fraction=work, seed=instr.seed, round=instr.round, client=pid,
        device=_device(instr),
    )
    if plan.fault == "dropout":
        raise InjectedFault(f"client {pid}: dropped out mid-round after {res.steps} steps")
    if plan.fault == "deadline":
        raise InjectedFault(f"client {pid}: straggler missed the round deadline")
    metrics = MetricRecord(
        {
            "partition-id": pid,
            "num-examples": len(data.y_train),
            "train-loss": float(res.loss),
            "train-accuracy": float(res.accuracy),
            "steps": int(res.steps),
            "label-hist": _hist(data.y_train, k),
        }
    )
    return Message(
        RecordDict({"arrays": params_to_record(get_params(model)), "metrics": metrics}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on this client's validation split (its training split if it has none)."""
    instr = ClientInstruction.decode(msg.content["config"])
    pid = _partition_id(context, instr)
    data, _ = _client_data(context, instr, pid)
    x, y = (data.x_val, data.y_val) if len(data.y_val) else (data.x_train, data.y_train)
    model = _model(instr.model)
    set_params(model, record_to_params(msg.content.array_records["arrays"]))
    loss, acc = evaluate_model(model, x, y)
    metrics = MetricRecord({"partition-id": pid, "num-examples": len(y), "loss": float(loss), "accuracy": float(acc)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
