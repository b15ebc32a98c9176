"""The fedagg ClientApp: trains the configured model on this node's shard.

Everything the client needs arrives in the message's ConfigRecord
("config"): the data spec (dataset, partition, seed -- the shard is rebuilt
and cached once per process), the model spec, training options, and the
simulation's instructions for this round ("sim.*": epochs, partial work,
injected faults). The partition id comes from the node config
(``partition-id``), as in Flower simulation and ``flower-supernode
--node-config``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..data.federated import ClientData, get_federated_data
from ..task.models import build_model
from ..task.train import get_params, round_lr, set_params, train_local
from .codec import from_config, params_to_record, record_to_params

app = ClientApp()


class InjectedFault(RuntimeError):
    """A fault the simulation injected on purpose (crash, dropout, deadline)."""


@lru_cache(maxsize=4)
def _model(model_json: str) -> torch.nn.Module:
    spec = json.loads(model_json)
    return build_model(spec["name"], tuple(spec["input_shape"]), int(spec["num_classes"]), **spec.get("options", {}))


def _partition_id(context: Context, cfg: dict[str, Any]) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("node config has no 'partition-id'; start the SuperNode with --node-config 'partition-id=<i> num-partitions=<N>'")
    pid = int(context.node_config["partition-id"])
    n = int(json.loads(cfg["fedagg.spec"])["num_clients"])
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


def _client_data(context: Context, cfg: dict[str, Any], pid: int) -> tuple[ClientData, int]:
    """This node's training data and the number of classes. With node config
    ``data-path`` (a local .npz with x_train/y_train, shaped like the
    experiment's dataset) the node trains on that file instead of its shard
    of the spec's dataset; otherwise the shard ``partition-id``."""
    path = context.node_config.get("data-path")
    if not path:
        fd = get_federated_data(json.loads(cfg["fedagg.spec"]))
        return fd.client(pid), fd.num_classes
    spec = json.loads(cfg["fedagg.model"])
    shape, k = tuple(spec["input_shape"]), int(spec["num_classes"])
    x, y = _load_npz(str(path))
    if len(x) != len(y) or len(y) == 0 or int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise ValueError(f"data-path={path}: x_train {x.shape} / y_train {y.shape} do not match input shape {shape}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"data-path={path}: labels must be in 0..{k - 1}, got {y.min()}..{y.max()}")
    x = x.astype(np.float32).reshape(len(y), *shape)
    return ClientData(x, y, x[:0], y[:0]), k


def _device(cfg: dict[str, Any]) -> str:
    want = str(cfg.get("device", "cpu"))
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={want} requested but CUDA is not available on this node")
    return want


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the stable client id, example count and label histogram."""
    cfg = from_config(msg.content["config"])
    pid = _partition_id(context, cfg)
    data, k = _client_data(context, cfg, pid)
    metrics = MetricRecord(
        {
            "partition-id": pid,
            "num-examples": int(len(data.y_train)),
            "label-hist": [int(c) for c in np.bincount(data.y_train, minlength=k)],
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = from_config(msg.content["config"])
    pid = _partition_id(context, cfg)
    fault = cfg.get("sim.fault")
    if fault == "crash":
        raise InjectedFault(f"client {pid}: injected crash (heterogeneity=crashes)")
    data, k = _client_data(context, cfg, pid)
    model = _model(cfg["fedagg.model"])
    set_params(model, record_to_params(msg.content["arrays"]))
    rnd = int(cfg["round"])
    epochs = int(cfg.get("sim.epochs", cfg.get("train.epochs", 1)))
    steps = int(cfg.get("train.steps", 0))
    batch = int(cfg.get("train.batch_size", 32))
    n = len(data.y_train)
    # a dropout trains half the round, then disappears; a straggler does part of it
    work = 0.5 if fault == "dropout" else float(cfg.get("sim.work_fraction", 1.0))
    res = train_local(
        model, data.x_train, data.y_train,
        epochs=epochs, steps=steps, batch_size=batch,
        lr=round_lr(float(cfg.get("train.lr", 0.05)), rnd, float(cfg.get("train.lr_decay", 1.0)),
                    int(cfg.get("train.lr_decay_every", 1))),
        optimizer=str(cfg.get("train.optimizer", "sgd")),
        momentum=float(cfg.get("train.momentum", 0.0)),
        weight_decay=float(cfg.get("train.weight_decay", 0.0)),
        proximal_mu=float(cfg.get("proximal_mu", cfg.get("train.proximal_mu", 0.0))),
        work_fraction=work, seed=int(cfg["seed"]), round=rnd, client=pid, device=_device(cfg),
    )
    if fault == "dropout":
        raise InjectedFault(f"client {pid}: dropped out mid-round after {res.steps} steps")
    if fault == "deadline":
        raise InjectedFault(f"client {pid}: straggler missed the round deadline")
    metrics = MetricRecord(
        {
            "partition-id": pid,
            "num-examples": int(n),
            "train-loss": float(res.loss),
            "train-accuracy": float(res.accuracy),
            "steps": int(res.steps),
            "label-hist": [int(c) for c in np.bincount(data.y_train, minlength=k)],
        }
    )
    return Message(
        RecordDict({"arrays": params_to_record(get_params(model)), "metrics": metrics}), reply_to=msg
    )
