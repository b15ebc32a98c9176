"""The protocol between fedagg's strategy and its ClientApp, in one place.

* the message keys (every module uses these constants, never the string);
* :class:`ClientInstruction` (defined in :mod:`fedagg.flower.instruction`,
  re-exported here), the one typed record a fedagg ClientApp receives;
* the train reply: :func:`train_metrics` / :func:`train_reply` build it,
  :func:`decode_train_reply` reads one back at the Flower boundary.

Decoding checks the *wire*: the records are there, the arrays decode, their
names and dtypes are the ones sent, the metrics have the right types, the
update's norm is within ``validation.max_update_norm``. The semantic checks
(shapes against the global model, finite values, a positive example count,
a well-formed label histogram, a histogram the rule needs) are the
aggregator contract's (:func:`fedagg.aggregators.base.check_update`), run
here per client so a bad reply is rejected and the round goes on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from ..aggregators.base import ClientUpdate, InvalidUpdate, Params, check_update
from .codec import params_to_record, record_to_params
from .instruction import FAULTS, KEY, ClientInstruction, ModelSpec, SimPlan, TrainOptions

__all__ = [
    "ACCURACY", "ARRAYS", "CONFIG", "DATA_PATH", "FAULTS", "INSTRUCTION", "LABEL_HIST", "LOSS", "METRICS",
    "NUM_EXAMPLES", "NUM_PARTITIONS", "PARTITION_ID", "PROXIMAL_MU", "SERVER_ROUND", "STEPS", "TRAIN_ACCURACY",
    "TRAIN_LOSS", "ClientInstruction", "ModelSpec", "SimPlan", "TrainOptions", "decode_train_reply",
    "example_count", "norm_problem", "single_record", "train_metrics", "train_reply",
]

# -- records of a message's content
ARRAYS = "arrays"  # ArrayRecord: the model sent / the model trained
CONFIG = "config"  # ConfigRecord: Flower's train config, plus the instruction
METRICS = "metrics"  # MetricRecord of a reply
INSTRUCTION = KEY  # the ClientInstruction's entry in the config
# -- config keys (Flower's own names, for foreign ClientApps too)
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
# -- node config keys (Flower simulation, flower-supernode --node-config)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_PATH = "data-path"
SLOWDOWN = "slowdown-s"  # node config: seconds the node's train handler sleeps before replying (tests, benchmarks)
# -- reply metrics
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
STEPS = "steps"
LABEL_HIST = "label-hist"
LOSS = "loss"
ACCURACY = "accuracy"


def train_metrics(pid: int, num_examples: int, loss: float, accuracy: float, steps: int,
                  label_hist: Sequence[int] | np.ndarray) -> MetricRecord:
    """A train reply's metrics."""
    return MetricRecord({
        PARTITION_ID: int(pid), NUM_EXAMPLES: int(num_examples), TRAIN_LOSS: float(loss),
        TRAIN_ACCURACY: float(accuracy), STEPS: int(steps), LABEL_HIST: [int(c) for c in label_hist],
    })


def train_reply(msg: Message, params: Params, metrics: MetricRecord) -> Message:
    """The reply to TRAIN message ``msg``: the trained model and its metrics."""
    return Message(RecordDict({ARRAYS: params_to_record(params), METRICS: metrics}), reply_to=msg)


def norm_problem(norm: float, max_update_norm: float) -> str:
    return f"update norm {norm:.4g} exceeds validation.max_update_norm={max_update_norm}"


def dtype_problem(name: str, dtype: np.dtype, ref: np.dtype) -> str:
    return f"'{name}' has dtype {dtype}, expected {ref}"


def finite_problem(key: str, v: object) -> str | None:
    """Why metric ``key`` = ``v`` is not a finite number, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
        return f"{key}={v!r} is not a finite number"
    return None


def _finite_metric(m: Mapping[str, object], key: str) -> float | None:
    v = m.get(key)
    if v is None:
        return None
    why = finite_problem(key, v)
    if why:
        raise InvalidUpdate(why)
    return float(v)  # type: ignore[arg-type]  # a number: checked above


def accuracy_problem(acc: float) -> str | None:
    return None if 0.0 <= acc <= 1.0 else (f"{TRAIN_ACCURACY}={acc} is outside [0, 1] "
                                          "(a fraction of the examples, not a percentage)")


R = TypeVar("R", ArrayRecord, MetricRecord)


def single_record(records: Mapping[str, R], key: str, kind: str) -> R:
    """The record named ``key``, else the only record of its kind (Flower takes the
    single ArrayRecord / MetricRecord of a reply whatever its name)."""
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    names = sorted(records)
    raise InvalidUpdate(f"reply has no '{key}' record" + (f" and {len(names)} {kind}s {names}" if names else ""))


def example_count(metrics: Mapping[str, object], key: str = NUM_EXAMPLES) -> int:
    """A reply's example count: a positive whole number (an integral float such as 32.0 counts)."""
    n = metrics.get(key)
    if isinstance(n, float) and np.isfinite(n) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise InvalidUpdate(f"{key}={n!r} is not a positive whole number")
    return n


def decode_train_reply(
    msg: Message,
    client_id: int,
    sent: Params,
    num_classes: int,
    max_update_norm: float | None = None,
    needs_hist: str | None = None,
    *,
    weight_key: str = NUM_EXAMPLES,
    arrays_key: str = ARRAYS,
) -> ClientUpdate:
    """Decode and validate one train reply; raise InvalidUpdate on any defect.
    ``num_classes`` 0: the number of classes is unknown (a foreign ClientApp), its
    histogram is not read. ``needs_hist``: the rule that needs a histogram. The
    ArrayRecord named ``arrays_key`` (or the reply's only one, whatever its name,
    as Flower reads it) holds the model; ``weight_key`` the example count (a whole
    number; an integral float counts)."""
    if msg.has_error():
        raise InvalidUpdate(f"client error: {msg.error.reason}")
    content = msg.content
    arrays = single_record(content.array_records, arrays_key, "ArrayRecord")
    m: Mapping[str, object] = single_record(content.metric_records, METRICS, "MetricRecord")
    try:
        params = record_to_params(arrays)
    except Exception as e:  # malformed bytes
        raise InvalidUpdate(f"arrays cannot be decoded: {e}") from e
    hist = m.get(LABEL_HIST)
    label_hist = np.asarray(hist) if hist is not None and num_classes > 0 else None
    loss, acc = _finite_metric(m, TRAIN_LOSS), _finite_metric(m, TRAIN_ACCURACY)
    steps = m.get(STEPS)
    if isinstance(steps, float) and np.isfinite(steps) and steps.is_integer():  # a whole number sent as a float
        steps = int(steps)
    meta: dict[str, int | float | str] = {STEPS: steps} if isinstance(steps, int) else {}
    n = example_count(m, weight_key)
    u = ClientUpdate(client_id, params, n, label_hist, loss, acc, meta, checked=True)  # returned only if it passes
    check_update(u, sent, num_classes, needs_hist)
    sq = 0.0
    for k, ref in sent.items():
        v = params[k]
        if v.dtype != ref.dtype:
            raise InvalidUpdate(dtype_problem(k, v.dtype, ref.dtype))
        if max_update_norm is not None and np.issubdtype(v.dtype, np.floating):
            sq += float(np.sum((v.astype(np.float64) - ref) ** 2))
    if max_update_norm is not None and np.sqrt(sq) > max_update_norm:
        raise InvalidUpdate(norm_problem(float(np.sqrt(sq)), max_update_norm))
    why = None if acc is None else accuracy_problem(acc)
    if why:
        raise InvalidUpdate(why)
    return u
