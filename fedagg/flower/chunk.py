"""Chunk messages: one TRAIN message for a chunk of clients, one reply for all of them.

fedagg's simulation grids send a worker a chunk of a round's clients as one
Message of type ``train.chunk`` (:func:`pack`); the ClientApp's chunk
handler trains them (stacked, or one by one) and answers with one reply
(:func:`reply`) that holds

* the chunk's trained parameters, stacked along a leading client axis, one
  row per client that trained and replied (``arrays``);
* their metrics as per-client arrays (``chunk-metrics``: partition id,
  example count, loss, accuracy, steps, label histograms);
* per client, in the chunk's order, the id of the message it stands for and
  its error (empty when it replied).

fedagg's strategy reads a chunk reply with :func:`updates`: every client's
``ClientUpdate`` holds views into the stacked arrays (no copy per client),
and the validation runs on the stacked arrays at once (names, shapes and
dtypes, finite values and update norms per client). Anyone else -- a foreign
strategy on fedagg's grids -- gets the standard per-client replies the grid
makes of it (``fedagg.runtime.vectorised.split_reply``). Deployment never
sees a chunk: a SuperNode serves one client.
"""
from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from ..aggregators.base import (
    ClientUpdate,
    InvalidUpdate,
    Params,
    check_update,
    names_problem,
    nonfinite_problem,
    shape_problem,
)
from .client_state import CLIENT_STATE, RULE_REPLY
from .codec import params_to_record, record_to_params, stacked_record
from .protocol import (
    ARRAYS,
    CONFIG,
    INSTRUCTION,
    LABEL_HIST,
    NUM_EXAMPLES,
    PARTITION_ID,
    STEPS,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    accuracy_problem,
    dtype_problem,
    finite_problem,
    norm_problem,
)

ROUTE = "chunk"  # @app.train(ROUTE)
MESSAGE_TYPE = f"train.{ROUTE}"
METRICS = "chunk-metrics"  # ArrayRecord: one array per metric, one entry per client that replied
MESSAGE_IDS = "fedagg.chunk.message-ids"
INSTRUCTIONS = "fedagg.chunk.instructions"
PARTITION_IDS = "fedagg.chunk.partition-ids"
ARRAYS_OF = "fedagg.chunk.arrays-of"  # client j trains from the ArrayRecord f"arrays.{ARRAYS_OF[j]}"
STACKED = "fedagg.chunk.stacked"
NODE_IDS = "fedagg.chunk.node-ids"  # the node each message was sent to (the strategy matches replies by node)
ERRORS = "fedagg.chunk.errors"
EXTRA_KEYS = "fedagg.chunk.extra-keys"  # other ArrayRecords of the messages (a client's state, the rule's arrays)
EXTRA_OF = "fedagg.chunk.of."  # + key: per client, which f"{key}.{i}" record it has (-1: none)


def error_reason(exc: BaseException) -> str:
    """An exception as one line, the last line of its traceback (``module.Type: message``)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


# --------------------------------------------------------------------------- the grid sends
def pack(messages: Sequence[Message], partition_ids: Sequence[int], stacked: bool) -> Message:
    """One chunk message for TRAIN ``messages`` (each with an instruction; client
    ``partition_ids[j]`` is the node of ``messages[j]``). Models the messages share
    (the global model) travel once."""
    records: dict[int, int] = {}
    content = RecordDict()
    arrays_of = []
    for m in messages:
        rec = m.content[ARRAYS]
        if id(rec) not in records:
            records[id(rec)] = len(records)
            content[f"{ARRAYS}.{records[id(rec)]}"] = rec
        arrays_of.append(records[id(rec)])
    # RecordDict.array_records builds a new typed dict per call: the records are read from the content as it is
    extra_keys = sorted({k for m in messages for k, v in m.content.items() if k != ARRAYS and isinstance(v, ArrayRecord)})
    extra_of: dict[str, list[int]] = {}
    for key in extra_keys:  # shared records (the rule's server arrays) travel once, a client's own state once each
        seen: dict[int, int] = {}
        of = extra_of[key] = []
        for m in messages:
            extra = m.content.get(key)
            if not isinstance(extra, ArrayRecord):
                of.append(-1)
                continue
            if id(extra) not in seen:
                seen[id(extra)] = len(seen)
                content[f"{key}.{seen[id(extra)]}"] = extra
            of.append(seen[id(extra)])
    extra_cfg: dict[str, list[str] | list[int]] = {}
    if extra_keys:
        extra_cfg[EXTRA_KEYS] = extra_keys
        extra_cfg.update({EXTRA_OF + key: of for key, of in extra_of.items()})
    content[CONFIG] = ConfigRecord({
        **extra_cfg,
        MESSAGE_IDS: [m.metadata.message_id for m in messages],
        NODE_IDS: [int(m.metadata.dst_node_id) for m in messages],
        INSTRUCTIONS: [str(m.content[CONFIG][INSTRUCTION]) for m in messages],
        PARTITION_IDS: [int(p) for p in partition_ids],
        ARRAYS_OF: arrays_of,
        STACKED: bool(stacked),
    })
    first = messages[0].metadata
    return Message(content, dst_node_id=first.dst_node_id, message_type=MESSAGE_TYPE, group_id=first.group_id)


def is_chunk_reply(msg: Message) -> bool:
    return msg.metadata.message_type == MESSAGE_TYPE and not msg.has_error()


# --------------------------------------------------------------------------- the ClientApp reads and answers
@dataclass(frozen=True)
class Request:
    message_ids: list[str]
    instructions: list[str]  # each client's raw instruction record
    partition_ids: list[int]
    arrays: list[ArrayRecord]  # each client's model (shared records are the same object)
    stacked: bool
    extras: list[dict[str, ArrayRecord]]  # each client's other records (its state, the rule's server arrays)


def read(msg: Message) -> Request:
    cfg = msg.content[CONFIG]
    ids = [str(x) for x in cfg[MESSAGE_IDS]]  # type: ignore[union-attr]
    of = [int(x) for x in cfg[ARRAYS_OF]]  # type: ignore[union-attr]
    recs = msg.content
    extras: list[dict[str, ArrayRecord]] = [{} for _ in ids]
    keys = cast(list[str], cfg.get(EXTRA_KEYS) or [])  # type: ignore[union-attr]
    for key in keys:
        for j, i in enumerate(cast(list[int], cfg[EXTRA_OF + key])):  # type: ignore[index]
            if i >= 0:
                extras[j][key] = cast(ArrayRecord, recs[f"{key}.{i}"])
    return Request(ids, [str(x) for x in cfg[INSTRUCTIONS]], [int(x) for x in cfg[PARTITION_IDS]],  # type: ignore[union-attr]
                   [cast(ArrayRecord, recs[f"{ARRAYS}.{j}"]) for j in of], bool(cfg[STACKED]), extras)


@dataclass
class Trained:
    """One client's training result, as its reply carries it."""

    pid: int
    params: Params
    num_examples: int
    loss: float
    accuracy: float
    steps: int
    label_hist: np.ndarray
    extras: Params | None = None  # the rule's reply arrays (RULE_REPLY)
    state: Params | None = None  # the client's new state, for the grid that keeps it (CLIENT_STATE)


def reply(msg: Message, message_ids: Sequence[str], outcomes: Sequence[Trained | BaseException]) -> Message:
    """The chunk reply: ``outcomes[j]`` is client j's result or its failure."""
    ok = [o for o in outcomes if isinstance(o, Trained)]
    content = RecordDict()
    if ok:
        content[ARRAYS] = stacked_record([o.params for o in ok])
        content[METRICS] = params_to_record({
            PARTITION_ID: np.array([o.pid for o in ok], dtype=np.int64),
            NUM_EXAMPLES: np.array([o.num_examples for o in ok], dtype=np.int64),
            TRAIN_LOSS: np.array([o.loss for o in ok], dtype=np.float64),
            TRAIN_ACCURACY: np.array([o.accuracy for o in ok], dtype=np.float64),
            STEPS: np.array([o.steps for o in ok], dtype=np.int64),
            LABEL_HIST: np.stack([np.asarray(o.label_hist, dtype=np.int64) for o in ok]),
        })
        for key, rows in ((RULE_REPLY, [o.extras for o in ok]), (CLIENT_STATE, [o.state for o in ok])):
            if all(r is not None for r in rows):
                content[key] = stacked_record(rows)  # type: ignore[arg-type]
    cfg = ConfigRecord({
        MESSAGE_IDS: list(message_ids),
        ERRORS: ["" if isinstance(o, Trained) else error_reason(o) for o in outcomes],
    })
    request = msg.content.config_records.get(CONFIG)
    if request is not None and NODE_IDS in request:
        cfg[NODE_IDS] = request[NODE_IDS]
    content[CONFIG] = cfg
    return Message(content, reply_to=msg)


def message_nodes(msg: Message) -> dict[str, int]:
    """A chunk reply's message ids, each with the node its message was sent to."""
    try:
        cfg = msg.content[CONFIG]
        return {str(m): int(n) for m, n in zip(cfg[MESSAGE_IDS], cfg[NODE_IDS], strict=True)}  # type: ignore[arg-type, call-overload]
    except Exception:  # noqa: BLE001 - malformed: it answers no asked node
        return {}


# --------------------------------------------------------------------------- the reply, read back
@dataclass(frozen=True)
class Decoded:
    """A chunk reply: per client (in chunk order) its message id and error ("" if it
    replied); for the clients that replied, in order, the stacked parameters and metrics."""

    message_ids: list[str]
    errors: list[str]
    params: Params
    metrics: Params
    extras: Params | None = None  # stacked RULE_REPLY arrays, one row per client that replied
    state: Params | None = None  # stacked CLIENT_STATE arrays

    def rows(self) -> list[tuple[str, int]]:
        """(message id, row in the stacked arrays) of each client that replied."""
        ok = [mid for mid, e in zip(self.message_ids, self.errors) if not e]
        return [(mid, j) for j, mid in enumerate(ok)]

    def trained(self, row: int) -> Trained:
        m = self.metrics
        return Trained(int(m[PARTITION_ID][row]), {k: v[row] for k, v in self.params.items()},
                       int(m[NUM_EXAMPLES][row]), float(m[TRAIN_LOSS][row]), float(m[TRAIN_ACCURACY][row]),
                       int(m[STEPS][row]), m[LABEL_HIST][row],
                       None if self.extras is None else {k: v[row] for k, v in self.extras.items()},
                       None if self.state is None else {k: v[row] for k, v in self.state.items()})


def decode(msg: Message) -> Decoded:
    """Read a chunk reply (ValueError if it is malformed)."""
    cfg = msg.content[CONFIG]
    ids = [str(x) for x in cfg[MESSAGE_IDS]]  # type: ignore[union-attr]
    errors = [str(x) for x in cfg[ERRORS]]  # type: ignore[union-attr]
    if len(ids) != len(errors):
        raise ValueError(f"chunk reply lists {len(ids)} messages but {len(errors)} outcomes")
    recs = msg.content
    n_ok = sum(1 for e in errors if not e)
    params = record_to_params(cast(ArrayRecord, recs[ARRAYS])) if n_ok else {}
    metrics = record_to_params(cast(ArrayRecord, recs[METRICS])) if n_ok else {}
    for k, v in metrics.items():
        if v.ndim < 1 or len(v) != n_ok:
            raise ValueError(f"chunk metric '{k}' has shape {v.shape}, expected {n_ok} rows")
    for k in (PARTITION_ID, NUM_EXAMPLES, TRAIN_LOSS, TRAIN_ACCURACY, STEPS):
        if n_ok and k not in metrics:
            raise ValueError(f"chunk reply has no '{k}' metric")
    stacked: dict[str, Params | None] = {}
    for key in (RULE_REPLY, CLIENT_STATE):
        rec = recs.array_records.get(key) if n_ok else None
        stacked[key] = None if rec is None else record_to_params(rec)
        for k, v in (stacked[key] or {}).items():
            if v.ndim < 1 or len(v) != n_ok:
                raise ValueError(f"chunk '{key}' array '{k}' has shape {v.shape}, expected {n_ok} rows")
    return Decoded(ids, errors, params, metrics, stacked[RULE_REPLY], stacked[CLIENT_STATE])


@dataclass(frozen=True)
class Row:
    """One client's outcome in a chunk reply: ``update`` (valid), or ``rejected``
    (why validation refused it), or ``failed`` (the client's error)."""

    update: ClientUpdate | None = None
    pid: int | None = None
    metrics: Mapping[str, int | float | list[int]] | None = None  # a valid update's metrics, as its reply has them
    rejected: str | None = None
    failed: str | None = None


def _bad_rows(a: np.ndarray) -> np.ndarray:
    """Rows of stacked float array ``a`` holding NaN or Inf: a float64 sum per row first
    (no temporary the size of ``a``); only a non-finite sum needs the element-wise test."""
    k = len(a)
    flat = a.reshape(k, -1)
    suspect = np.flatnonzero(~np.isfinite(flat.sum(1, dtype=np.float64)))
    return np.array([j for j in suspect if not np.isfinite(flat[j]).all()], dtype=np.int64)


def updates(msg: Message, sent: Mapping[str, tuple[int, Params]], num_classes: int,
            max_update_norm: float | None = None, needs_hist: str | None = None) -> dict[str, Row]:
    """Each client's outcome in chunk reply ``msg``, keyed by the id of the message it
    answers; ``sent[message id] = (client id, model sent)``. Messages not in ``sent`` are
    left out. The parameters are checked stacked, the metrics per client."""
    try:
        d = decode(msg)
    except Exception as e:  # noqa: BLE001 - a malformed chunk: every client in it is refused
        try:
            ids = [str(x) for x in msg.content[CONFIG][MESSAGE_IDS]]  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            ids = []
        return {mid: Row(rejected=f"chunk reply cannot be decoded: {e}") for mid in ids if mid in sent}
    out: dict[str, Row] = {mid: Row(failed=e) for mid, e in zip(d.message_ids, d.errors) if e and mid in sent}
    rows = [(mid, j) for mid, j in d.rows() if mid in sent]
    if not rows:
        return out
    template = sent[rows[0][0]][1]
    k = len(d.errors) - sum(1 for e in d.errors if e)
    why = names_problem(list(d.params), template)
    for name, ref in template.items():
        if why:
            break
        a = d.params[name]
        if a.shape[1:] != ref.shape or len(a) != k:
            why = shape_problem(name, a.shape[1:], ref.shape)
        elif a.dtype != ref.dtype:
            why = dtype_problem(name, a.dtype, ref.dtype)
    if why:
        return out | {mid: Row(rejected=why) for mid, _ in rows}
    refused: dict[int, str] = {}
    for name, ref in template.items():  # finite values, every row of a tensor at once
        if np.issubdtype(ref.dtype, np.floating):
            for j in _bad_rows(d.params[name]).tolist():
                refused.setdefault(j, nonfinite_problem(name))
    if max_update_norm is not None:
        sq = np.zeros(k, dtype=np.float64)
        js = np.array([j for _, j in rows])
        for name, ref in template.items():
            if not np.issubdtype(ref.dtype, np.floating):
                continue
            a = d.params[name].reshape(k, -1)[js]
            base = np.stack([sent[mid][1][name].reshape(-1) for mid, _ in rows])
            sq[js] += ((a.astype(np.float64) - base) ** 2).sum(1)
        for j in np.flatnonzero(np.sqrt(sq) > max_update_norm).tolist():
            refused.setdefault(j, norm_problem(float(np.sqrt(sq[j])), max_update_norm))
    m = d.metrics
    hist = m.get(LABEL_HIST) if num_classes > 0 else None
    fast = _plain_rows(m, hist, k, num_classes, needs_hist)
    names = list(d.params)
    pids, counts, steps = m[PARTITION_ID].tolist(), m[NUM_EXAMPLES].tolist(), m[STEPS].tolist()
    losses, accs = m[TRAIN_LOSS].tolist(), m[TRAIN_ACCURACY].tolist()
    hists = m[LABEL_HIST].tolist() if LABEL_HIST in m else None
    for mid, j in rows:
        cid = sent[mid][0]
        if j in refused:
            out[mid] = Row(rejected=refused[j])
            continue
        extras = None if d.extras is None else {k: v[j] for k, v in d.extras.items()}
        if fast[j]:  # every per-client check at once passed (_plain_rows): no scalar pass
            loss, acc, n, s = losses[j], accs[j], counts[j], steps[j]
            u = ClientUpdate(cid, {name: d.params[name][j] for name in names}, n,
                             None if hist is None else hist[j], loss, acc, {STEPS: s}, extras, checked=True)
        else:
            loss, acc = float(m[TRAIN_LOSS][j]), float(m[TRAIN_ACCURACY][j])
            u = ClientUpdate(cid, {name: v[j] for name, v in d.params.items()}, int(m[NUM_EXAMPLES][j]),
                             None if hist is None else hist[j], loss, acc, {STEPS: int(m[STEPS][j])}, extras,
                             checked=True)  # kept only if the checks below pass
            try:
                why = finite_problem(TRAIN_LOSS, loss) or finite_problem(TRAIN_ACCURACY, acc) or accuracy_problem(acc)
                if why:
                    raise InvalidUpdate(why)
                check_update(u, template, num_classes, needs_hist, params_checked=True)
            except InvalidUpdate as e:
                out[mid] = Row(rejected=str(e))
                continue
        pid = int(pids[j])
        metrics: dict[str, int | float | list[int]] = {PARTITION_ID: pid, NUM_EXAMPLES: u.num_examples,
                                                       TRAIN_LOSS: loss, TRAIN_ACCURACY: acc,
                                                       STEPS: int(steps[j])}
        if hists is not None:
            metrics[LABEL_HIST] = [int(c) for c in hists[j]]
        out[mid] = Row(update=u, pid=pid, metrics=metrics)
    return out


def _plain_rows(m: Params, hist: np.ndarray | None, k: int, num_classes: int, needs_hist: str | None) -> np.ndarray:
    """Per row of a chunk reply's metrics: True where every per-client check of
    :func:`updates` passes (finite loss and accuracy, accuracy in [0, 1], a whole
    positive example count, a well-formed label histogram or none needed), tested
    on the metric arrays at once. A False row goes through the scalar checks,
    which name its defect."""
    ok = np.zeros(k, dtype=bool)
    n, steps = m[NUM_EXAMPLES], m[STEPS]
    if not (np.issubdtype(n.dtype, np.integer) and np.issubdtype(steps.dtype, np.integer)
            and all(np.issubdtype(m[key].dtype, np.number) for key in (TRAIN_LOSS, TRAIN_ACCURACY, PARTITION_ID))
            and np.issubdtype(m[PARTITION_ID].dtype, np.integer)):
        return ok
    loss, acc = m[TRAIN_LOSS].astype(np.float64), m[TRAIN_ACCURACY].astype(np.float64)
    ok = np.isfinite(loss) & np.isfinite(acc) & (acc >= 0.0) & (acc <= 1.0) & (n >= 1)
    if hist is None:
        return ok & (needs_hist is None)
    if hist.shape[1:] != (num_classes,) or not np.issubdtype(hist.dtype, np.number):
        return np.zeros(k, dtype=bool)
    h = hist.reshape(k, -1)
    return ok & np.isfinite(h).all(1) & (h >= 0).all(1) & (h.sum(1) > 0)
