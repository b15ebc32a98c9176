"""A user's own Flower ClientApp -- not fedagg's -- for the strategy tests.

It speaks only Flower's standard keys: it reads ``arrays`` and the ``config``
its ServerApp sends (``server-round``, ``lr``, ..., and its own ``data-spec``),
and replies ``arrays`` + ``metrics`` with ``num-examples`` (plus
``train-loss``, ``train-accuracy``, ``steps`` and ``label-hist``). It has no query
handler, so the strategy must assign client ids itself. For training it
reuses fedagg's data and task functions, so its numbers can be compared with
a fedagg run of the same seed.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedagg.data.federated import get_federated_data
from fedagg.task.models import build_model
from fedagg.task.train import evaluate, train_local

app = ClientApp()


def _setup(msg: Message, context: Context):
    cfg = msg.content["config"]
    spec = json.loads(str(cfg["data-spec"]))
    fd = get_federated_data(spec)
    pid = int(context.node_config["partition-id"])
    model = build_model("mlp", tuple(fd.data.input_shape), fd.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, spec, fd, pid, model


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg, spec, fd, pid, model = _setup(msg, context)
    data = fd.client(pid)
    res = train_local(
        model, data.x_train, data.y_train, epochs=int(cfg["epochs"]), steps=0, batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]), momentum=float(cfg["momentum"]), weight_decay=0.0,
        proximal_mu=float(cfg.get("proximal-mu", 0.0)), seed=int(spec["seed"]), round=int(cfg["server-round"]),
        client=pid,
    )
    metrics = {"num-examples": len(data.y_train), "train-loss": float(res.loss),
               "train-accuracy": float(res.accuracy)}
    if cfg.get("send-steps", True):  # the local SGD steps taken (FedNova reads them)
        metrics["steps"] = int(res.steps)
    if cfg.get("send-label-hist", True):
        metrics["label-hist"] = np.bincount(data.y_train, minlength=fd.num_classes).tolist()
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    _, _, fd, pid, model = _setup(msg, context)
    data = fd.client(pid)
    loss, acc = evaluate(model, data.x_train, data.y_train)
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": len(data.y_train), "loss": loss,
                                                        "accuracy": acc})}), reply_to=msg)
