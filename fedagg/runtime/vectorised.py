"""Vectorised cohorts in the simulation grids (``runtime.vectorize``).

A simulation grid hands a round's TRAIN messages to :func:`plan_chunks`,
which groups them by training setup (model, data spec, batch size, learning
rate of the round, momentum, weight decay, FedProx mu, seed, device; not the round
itself: each client shuffles with its own round's stream), orders each
group by planned step count, then client id, and cuts it into fixed-size
chunks of ``runtime.cohort_chunk`` clients -- so a stacked chunk's composition, and
therefore every number it produces, depends neither on the number of workers
nor on scheduling (chunks trained one by one are dealt over at least one chunk
per worker: there a client's numbers are its own, whatever its chunk). A stacked step costs about the same whether one client or
all of the chunk still works, so clients with similar step counts are put
together: on MNIST-1D with Dirichlet shards that made a round up to 15 %
faster than chunks in plain client-id order (README, Performance).
A chunk travels as one message (:func:`chunk_message`) to the ClientApp's
chunk handler, which trains it -- as one stacked model where
:func:`chunk_settings` allows it (:mod:`fedagg.task.cohort`), else client by
client (models that cannot be stacked, or under ``vectorize=auto`` train
slower stacked; the reason is logged once) -- and answers with one reply
(:mod:`fedagg.flower.chunk`). fedagg's strategy reads that reply as it is;
for anyone else the grid turns it into the standard per-client replies
(:func:`split_reply`). Messages that are not chunked (not TRAIN, a node with
its own ``data-path``, no readable instruction) go to the ClientApp one by
one. This module only plans and carries messages; what a client does is the
ClientApp's.
"""
from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from flwr.app import Error, Message, MessageType

from ..dp import CLIENT_MODES
from ..errors import ConfigError
from ..flower.protocol import CONFIG, DATA_PATH, INSTRUCTION, PARTITION_ID, ClientInstruction
from ..task.cohort import log_fallback_once, slower_reason, unsupported_reason
from ..task.contrastive import UNSTACKED
from ..task.work import round_lr
from .calls import ERROR_CODE_CLIENT_EXCEPTION, reply_from_node

if TYPE_CHECKING:
    from ..config import RuntimeConfig

log = logging.getLogger("fedagg")

VECTORIZE_CHOICES = ("auto", "true", "false")


@dataclass(frozen=True)
class VectorSettings:
    mode: str = "auto"  # auto | true | false
    chunk: int = 10
    stacked: bool = True  # chunks train as stacked models (False: one by one inside the worker)

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
    agg = getattr(exp, "aggregator", None)
    if reason is None and agg is not None and agg.client_terms().get("rule") == "moon":
        reason = UNSTACKED
    if reason and settings.mode == "true":
        raise ConfigError(f"runtime.vectorize=true but this setup cannot be vectorised: {reason}; "
                          "use runtime.vectorize=auto (falls back to per-client training) or false")
    # CPU-only knowledge: on CUDA, stacked 2-D convolutions stay stacked (scripts/gpu_check.sh measures it)
    if reason is None and settings.mode == "auto" and not str(exp.device).startswith("cuda"):
        reason = slower_reason(model)
    if reason:
        log_fallback_once(reason)
    return reason


def chunk_settings(exp: Any) -> VectorSettings | None:
    """How the simulation grids cut a round into chunks for ``exp`` (None:
    ``runtime.vectorize=false`` or a client-side ``dp.mode``, one message per client): stacked where
    :func:`check_supported` allows, else trained one by one inside the worker."""
    settings = settings_from(exp.cfg.runtime)
    if not settings.enabled:
        return None
    if exp.cfg.dp.mode in CLIENT_MODES:  # Flower's clipping mods read per-client train messages (vectorize=true refused)
        log_fallback_once(f"dp.mode={exp.cfg.dp.mode} clips each client's update in Flower's mod, "
                          "which reads per-client train messages")
        return None
    return replace(settings, stacked=check_supported(exp, settings) is None)


# --------------------------------------------------------------------------- planning (grid side)
def _instruction(msg: Message) -> ClientInstruction:
    return ClientInstruction.decode(msg.content[CONFIG])


def _group_key(msg: Message) -> str | None:
    """Everything but the per-client simulation plan (epochs, work fraction, fault) and the
    round: the instruction's JSON (sorted keys) without its ``plan`` entry, with the round's
    learning rate in place of the round (the asynchronous modes send several model versions
    at once: their clients stack, each on its own round's shuffle stream); None if there is
    no readable instruction (the ClientApp then answers with the error)."""
    try:
        raw = msg.content[CONFIG][INSTRUCTION]
    except Exception:  # noqa: BLE001 - no instruction: leave it to the ClientApp's error reply
        return None
    return _key_of(str(raw))


@functools.lru_cache(maxsize=64)
def _key_of(raw: str) -> str | None:
    try:
        d = json.loads(raw)
        d.pop("plan")
        t = d["train"]
        d["round_lr"] = round_lr(float(t["lr"]), int(d.pop("round")), float(t["lr_decay"]), int(t["lr_decay_every"]))
    except Exception:  # noqa: BLE001 - malformed: leave it to the ClientApp's error reply
        return None
    return json.dumps(d, sort_keys=True)


def planned_work(msg: Message, pid: int) -> int:
    """The minibatch steps client ``pid`` will take for ``msg``: 0 for an injected fault (its
    work is not kept) or when the shard size cannot be known here. A deterministic sort key."""
    from ..data.federated import federated_data

    try:
        instr = _instruction(msg)
        if instr.plan.fault is not None:
            return 0
        return instr.work(federated_data(instr.data_key).train_size(pid)).steps
    except Exception:  # noqa: BLE001 - the ClientApp path reports what is wrong with this message
        return 0


def plan_chunks(messages: Sequence[Message], node_config: Callable[[int], dict[str, Any]],
                chunk: int, stacked: bool = True) -> tuple[list[list[Message]], list[Message]]:
    """Split a round's messages into cohort chunks and the rest (sent one by one).
    Chunks: TRAIN messages with the same setup, ordered by (planned steps, client id),
    ``chunk`` at a time. ``stacked=False`` (chunks trained one by one, where a chunk's
    cost is the sum of its clients' work and a client's numbers never depend on its chunk):
    the same order dealt round-robin over the chunks, so they carry about equal work and
    the workers finish together (the Ray grid's :func:`_plan` also makes at least one such
    chunk per worker)."""
    chunks, _, rest = _plan(messages, node_config, chunk, stacked)
    return chunks, rest


def _plan(messages: Sequence[Message], node_config: Callable[[int], dict[str, Any]], chunk: int,
          stacked: bool, workers: int = 1) -> tuple[list[list[Message]], list[int], list[Message]]:
    """:func:`plan_chunks`, plus each chunk's planned work (its clients' steps)."""
    groups: dict[str, list[tuple[tuple[int, int], Message]]] = {}
    rest: list[Message] = []
    for msg in messages:
        nc = node_config(msg.metadata.dst_node_id)
        if msg.metadata.message_type != MessageType.TRAIN or nc.get(DATA_PATH) or PARTITION_ID not in nc:
            rest.append(msg)
            continue
        key = _group_key(msg)
        if key is None:
            rest.append(msg)
            continue
        pid = int(nc[PARTITION_ID])
        groups.setdefault(key, []).append(((planned_work(msg, pid), pid), msg))
    chunks: list[list[Message]] = []
    work: list[int] = []
    for key in sorted(groups):
        ordered = sorted(groups[key], key=lambda t: t[0])
        parts = [[ordered[i] for i in part] for part in cut_group(len(ordered), chunk, stacked, workers)]
        chunks += [[msg for _, msg in part] for part in parts]
        work += [sum(w for (w, _), _ in part) for part in parts]
    return chunks, work, rest


def cut_group(n: int, chunk: int, stacked: bool, workers: int = 1) -> list[list[int]]:
    """The chunks of a group of ``n`` clients ordered by (planned steps, client id), as positions in that
    order: stacked, ``chunk`` at a time (a chunk's composition never depends on ``workers``); one by one,
    the order dealt round-robin over ``ceil(n / chunk)`` chunks, at least one per worker (a client's
    numbers do not depend on its chunk there)."""
    if stacked:
        return [list(range(s, min(s + chunk, n))) for s in range(0, n, chunk)]
    m = max(-(-n // chunk), min(workers, n))
    return [list(range(j, n, m)) for j in range(m)]


def deal_chunks(work: Sequence[int], workers: int) -> list[list[int]]:
    """Each worker's chunks (indices into ``work``) in the order it trains them, its most work first:
    :func:`assign_chunks`'s placement."""
    assigned = assign_chunks(work, workers)
    out: list[list[int]] = [[] for _ in range(workers)]
    for j in sorted(range(len(work)), key=lambda j: (-work[j], j)):
        out[assigned[j]].append(j)
    return out


def assign_chunks(work: Sequence[int], workers: int) -> list[int]:
    """The worker of each chunk: the largest planned work first, each to the least loaded worker
    (ties: the lower index). Deterministic; a chunk's numbers never depend on where it runs."""
    load = [0] * workers
    out = [0] * len(work)
    for j in sorted(range(len(work)), key=lambda j: (-work[j], j)):
        w = min(range(workers), key=lambda i: (load[i], i))
        out[j] = w
        load[w] += max(1, work[j])
    return out


# --------------------------------------------------------------------------- chunks on the wire (grid side)
def chunk_message(chunk: Sequence[Message], node_config: Callable[[int], dict[str, Any]], stacked: bool) -> Message:
    """The one message that carries ``chunk`` to the ClientApp's chunk handler."""
    from ..flower import chunk as wire

    msg = wire.pack(chunk, [int(node_config(m.metadata.dst_node_id)[PARTITION_ID]) for m in chunk], stacked)
    msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return msg


def split_reply(reply: Message, chunk: Sequence[Message]) -> list[Message]:
    """The standard per-client replies (one per message of ``chunk``, in order) that
    the chunk's reply stands for: what a strategy that is not fedagg's receives, and
    what the ClientApp's single-client handler would have answered."""
    from ..flower import chunk as wire
    from ..flower.client_state import RULE_REPLY
    from ..flower.codec import params_to_record
    from ..flower.protocol import train_metrics, train_reply

    if reply.has_error():  # the handler failed as a whole: each client has its error
        reason = reply.error.reason or "chunk handler failed"
        return [_error(m, reason) for m in chunk]
    try:
        d = wire.decode(reply)
    except Exception as e:  # noqa: BLE001 - malformed: each client has the error
        return [_error(m, f"chunk reply cannot be decoded: {type(e).__name__}: {e}") for m in chunk]
    by_id = {m.metadata.message_id: m for m in chunk}
    out: dict[str, Message] = {}
    for mid, err in zip(d.message_ids, d.errors):
        if err and mid in by_id:
            out[mid] = _error(by_id[mid], err)
    for mid, row in d.rows():
        if mid in by_id:
            t = d.trained(row)
            r = train_reply(by_id[mid], t.params, train_metrics(t.pid, t.num_examples, t.loss, t.accuracy, t.steps,
                                                                 t.label_hist))
            if t.extras is not None:
                r.content[RULE_REPLY] = params_to_record(t.extras)
            out[mid] = reply_from_node(r, by_id[mid])
    return [out.get(m.metadata.message_id) or _error(m, "the chunk reply has no outcome for this client")
            for m in chunk]


def _error(msg: Message, reason: str) -> Message:
    return reply_from_node(Message(Error(code=ERROR_CODE_CLIENT_EXCEPTION, reason=reason), reply_to=msg), msg)
