"""Vectorised cohorts in the simulation grids (``runtime.vectorize``).

A simulation grid hands a round's TRAIN messages to :func:`plan_chunks`,
which groups them by training setup (model, data spec, batch size, learning
rate, momentum, weight decay, FedProx mu, seed, round, device), orders each
group by planned step count, then client id, and cuts it into fixed-size
chunks of ``runtime.cohort_chunk`` clients -- so a chunk's composition, and
therefore every number it produces, depends neither on the number of workers
nor on scheduling. A stacked step costs about the same whether one client or
all of the chunk still works, so clients with similar step counts are put
together: on MNIST-1D with Dirichlet shards that made a round up to 15 %
faster than chunks in plain client-id order (README, Performance).
:func:`run_chunk` trains one chunk as one stacked model
(:mod:`fedagg.task.cohort`) and builds, per message, exactly the reply the
ClientApp would have built: the same metrics keys and label histogram, and
the same error replies for injected faults (crash, dropout, deadline).
Messages the cohort path does not handle (not TRAIN, a node with its own
``data-path``, an unsupported model or optimiser) go through the ClientApp
one by one; the reason is logged once. The ClientApp used in deployment is
untouched.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context, Error, Message, MessageType, MetricRecord, RecordDict

from ..errors import ConfigError
from ..flower.instruction import KEY, ClientInstruction
from ..task.cohort import Member, log_fallback_once, planned_steps, slower_reason, train_cohort, unsupported_reason
from ..task.train import round_lr
from .calls import ERROR_CODE_CLIENT_EXCEPTION, reply_from_node

if TYPE_CHECKING:
    from ..config import RuntimeConfig

log = logging.getLogger("fedagg")

VECTORIZE_CHOICES = ("auto", "true", "false")


@dataclass(frozen=True)
class VectorSettings:
    mode: str = "auto"  # auto | true | false
    chunk: int = 10

    @property
    def enabled(self) -> bool:
        return self.mode != "false"


def settings_from(rt: RuntimeConfig) -> VectorSettings:
    """``runtime.vectorize`` / ``runtime.cohort_chunk``, checked."""
    raw = rt.vectorize
    mode = {True: "true", False: "false"}.get(raw, str(raw).lower()) if isinstance(raw, bool) else str(raw).lower()
    if mode not in VECTORIZE_CHOICES:
        raise ConfigError(f"runtime.vectorize={raw!r} is not allowed; use auto, true or false")
    chunk = rt.cohort_chunk
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ConfigError(f"runtime.cohort_chunk={chunk!r} must be an integer >= 1 (clients trained together)")
    return VectorSettings(mode, chunk)


def check_supported(exp: Any, settings: VectorSettings) -> str | None:
    """Why this experiment's clients are not vectorised (None: they are).
    ``runtime.vectorize=true`` turns a reason they cannot be into a config error, before
    training; ``auto`` also leaves client by client the models that train slower stacked."""
    if not settings.enabled:
        return None
    optimizer = exp.cfg.train.optimizer
    model = exp.model()
    reason = unsupported_reason(model, optimizer=optimizer, input_shape=tuple(exp.model_spec["input_shape"]))
    if reason and settings.mode == "true":
        raise ConfigError(f"runtime.vectorize=true but this setup cannot be vectorised: {reason}; "
                          "use runtime.vectorize=auto (falls back to per-client training) or false")
    if reason is None and settings.mode == "auto":
        reason = slower_reason(model)
    if reason:
        log_fallback_once(reason)
    return reason


# --------------------------------------------------------------------------- planning (grid side)
def _instruction(msg: Message) -> ClientInstruction:
    return ClientInstruction.decode(msg.content.config_records["config"])


def _group_key(msg: Message) -> str | None:
    """Everything but the per-client simulation plan (epochs, work fraction, fault): the
    instruction's JSON (sorted keys) without its ``plan`` entry; None if there is no
    readable instruction (the ClientApp then answers with the error)."""
    try:
        raw = msg.content.config_records["config"][KEY]
    except Exception:  # noqa: BLE001 - no instruction: leave it to the ClientApp's error reply
        return None
    return _key_of(str(raw))


@functools.lru_cache(maxsize=64)
def _key_of(raw: str) -> str | None:
    try:
        d = json.loads(raw)
        d.pop("plan")
    except Exception:  # noqa: BLE001 - malformed: leave it to the ClientApp's error reply
        return None
    return json.dumps(d, sort_keys=True)


def planned_work(msg: Message, pid: int) -> int:
    """The minibatch steps client ``pid`` will take for ``msg``: 0 for an injected fault (its
    work is not kept) or when the shard size cannot be known here. A deterministic sort key."""
    from ..data.federated import get_federated_data

    try:
        instr = _instruction(msg)
        plan, tr = instr.plan, instr.train
        if plan.fault is not None:
            return 0
        n = get_federated_data(instr.data).train_size(pid)
        return planned_steps(n, epochs=instr.epochs, steps=tr.steps, batch_size=tr.batch_size,
                             work_fraction=plan.work_fraction)
    except Exception:  # noqa: BLE001 - the ClientApp path reports what is wrong with this message
        return 0


def plan_chunks(messages: Sequence[Message], node_config: Callable[[int], dict[str, Any]],
                chunk: int) -> tuple[list[list[Message]], list[Message]]:
    """Split a round's messages into cohort chunks and the rest (sent one by one).
    Chunks: TRAIN messages with the same setup, ordered by (planned steps, client id),
    ``chunk`` at a time."""
    groups: dict[str, list[tuple[tuple[int, int], Message]]] = {}
    rest: list[Message] = []
    for msg in messages:
        nc = node_config(msg.metadata.dst_node_id)
        if msg.metadata.message_type != MessageType.TRAIN or nc.get("data-path") or "partition-id" not in nc:
            rest.append(msg)
            continue
        key = _group_key(msg)
        if key is None:
            rest.append(msg)
            continue
        pid = int(nc["partition-id"])
        groups.setdefault(key, []).append(((planned_work(msg, pid), pid), msg))
    chunks = []
    for key in sorted(groups):
        ordered = [m for _, m in sorted(groups[key], key=lambda t: t[0])]
        chunks += [ordered[s : s + chunk] for s in range(0, len(ordered), chunk)]
    return chunks, rest


# --------------------------------------------------------------------------- training (worker side)
def _error(msg: Message, exc: BaseException) -> Message:
    reason = f"{type(exc).__name__}: {exc}"
    return reply_from_node(Message(Error(code=ERROR_CODE_CLIENT_EXCEPTION, reason=reason), reply_to=msg), msg)


def run_chunk(client_app: Any, batch: Sequence[tuple[Message, Context]]) -> list[Message]:
    """Train one chunk (same setup) vectorised; one reply per message, in order.
    Falls back to ``client_app`` per message where the setup cannot be vectorised."""
    from ..flower import client_app as ca
    from ..flower.codec import params_to_record, record_to_params
    from .calls import call_client

    if not batch:
        return []
    first = _instruction(batch[0][0])
    opts = first.train
    model = ca._model(first.model)
    reason = unsupported_reason(model, optimizer=opts.optimizer,
                                input_shape=first.model.input_shape)
    if reason:
        log_fallback_once(reason)
        return [call_client(client_app, m, c) for m, c in batch]
    replies: dict[int, Message] = {}
    members: list[tuple[int, Member, int, np.ndarray, str | None]] = []
    decoded: dict[int, dict[str, np.ndarray]] = {}  # id(ArrayRecord) -> params: a shared global model is decoded once
    batch_size = opts.batch_size
    for i, (msg, ctx) in enumerate(batch):
        try:
            instr = _instruction(msg)
            pid = ca._partition_id(ctx, instr)
            fault = instr.plan.fault
            if fault == "crash":
                raise ca.InjectedFault(f"client {pid}: injected crash (heterogeneity=crashes)")
            data, k = ca._client_data(ctx, instr, pid)
            epochs = instr.epochs
            steps = instr.train.steps
            work = 0.5 if fault == "dropout" else instr.plan.work_fraction
            if fault == "dropout":  # its work is discarded: only the step count is reported
                done = planned_steps(len(data.y_train), epochs=epochs, steps=steps, batch_size=batch_size,
                                     work_fraction=work)
                raise ca.InjectedFault(f"client {pid}: dropped out mid-round after {done} steps")
            if fault == "deadline":
                raise ca.InjectedFault(f"client {pid}: straggler missed the round deadline")
            rec = msg.content.array_records["arrays"]
            if id(rec) not in decoded:
                decoded[id(rec)] = record_to_params(rec)
            m = Member(pid, data.x_train, data.y_train, decoded[id(rec)], epochs=epochs, steps=steps,
                       work_fraction=work)
            hist = np.bincount(data.y_train, minlength=k)
            members.append((i, m, len(data.y_train), hist, None))
        except Exception as e:  # noqa: BLE001 - a failing client is an error reply, as in the ClientApp
            replies[i] = _error(msg, e)
    if members:
        try:
            results = train_cohort(
                model, [m for _, m, _, _, _ in members], batch_size=batch_size,
                lr=round_lr(opts.lr, first.round, opts.lr_decay, opts.lr_decay_every), momentum=opts.momentum, weight_decay=opts.weight_decay,
                proximal_mu=opts.proximal_mu, seed=first.seed, round=first.round, device=ca._device(first),
            )
        except Exception as e:  # noqa: BLE001 - the whole chunk failed: each client gets the error
            results = None
            for i, *_ in members:
                replies[i] = _error(batch[i][0], e)
        if results is not None:
            for (i, m, n, hist, _), (params, res) in zip(members, results):
                msg = batch[i][0]
                metrics = MetricRecord({
                    "partition-id": m.client, "num-examples": int(n), "train-loss": float(res.loss),
                    "train-accuracy": float(res.accuracy), "steps": int(res.steps),
                    "label-hist": [int(c) for c in hist],
                })
                reply = Message(RecordDict({"arrays": params_to_record(params), "metrics": metrics}),
                                reply_to=msg)
                replies[i] = reply_from_node(reply, msg)
    return [replies[i] for i in range(len(batch))]
