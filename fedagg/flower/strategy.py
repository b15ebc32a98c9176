"""fedagg's rules as Flower strategies. How a round flows, in one file:

1. ``configure_train``: the participation pattern says which clients are
   available; each asked client gets one Message with the global model (or,
   for gossip, its own node model) and the config -- the caller's train
   config, ``server-round`` and, when the strategy drives fedagg's own
   ClientApp, the typed :class:`ClientInstruction` with the simulation's
   plan for that client;
2. the grid delivers them and returns the replies that arrived in time;
3. ``aggregate_train`` validates each reply at the boundary (protocol; a
   chunk reply of fedagg's grids at once, :mod:`fedagg.flower.chunk`), turns
   the valid ones into ``ClientUpdate`` values keyed by the stable client
   id, hands them to the rule's ``Aggregator.apply`` with a ``RoundInfo`` of
   what was observed, and returns the new global ``ArrayRecord`` and a
   ``MetricRecord`` (Flower's contract);
4. ``configure_evaluate`` / ``aggregate_evaluate``: optional client-side
   evaluation of the new model (``fraction_evaluate``), aggregated weighted
   by ``num-examples``;
5. ``evaluate_fn(round, arrays)`` evaluates on the server; then each
   :class:`RoundCallback` sees the round's :class:`RoundRecord`.

Client ids: aggregators key their state by a stable client id 0..N-1, never
Flower's node id. The strategy learns them itself: a grid that knows them
(fedagg's simulation grids: ``grid.client_node_map()``) says so; otherwise,
before round 1, it sends every node a QUERY; a node that answers with ``partition-id`` in its metrics
(fedagg's ClientApp does) is that client; nodes of a foreign ClientApp that
has no query handler get ids in the order of their node ids. A train reply
that echoes a ``partition-id`` must match what its node said.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..aggregators.base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    InvalidUpdate,
    Metrics,
    Params,
    RoundInfo,
)
from ..seeding import rng
from . import chunk
from .callbacks import RoundCallback
from .codec import params_to_record, record_to_params
from .protocol import METRICS, PARTITION_ID, ClientInstruction, SimPlan, decode_train_reply

log = logging.getLogger("fedagg")

RuleFactory = Callable[[AggregatorContext], Aggregator]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class Availability(Protocol):
    """Which clients may take part in a round (fedagg.env.participation)."""

    def available(self, round: int) -> np.ndarray: ...


class Planner(Protocol):
    """The simulation's plan for one client in one round (fedagg.env.heterogeneity)."""

    def plan(self, round: int, client: int) -> Mapping[str, int | float | str]: ...


@dataclass
class RoundRecord:
    """Everything observed in one round (what the callbacks see)."""

    round: int
    asked: list[int]
    replied: list[int]
    failed: dict[int, str]  # client -> reason (no reply, client error)
    rejected: dict[int, str]  # client -> validation reason
    train_loss: float | None
    agg_metrics: Metrics
    test_loss: float | None = None
    test_accuracy: float | None = None
    client_eval: dict[str, float] = field(default_factory=dict)  # aggregated client-side evaluation
    seconds: float = 0.0


def _failure(reason: str | None) -> str:
    """A client's error, as the round's record says it: the last line of its reason."""
    lines = (reason or "").strip().splitlines()
    return f"client error: {lines[-1][:300] if lines else 'unknown'}"


class FedaggStrategy(Strategy):
    """A Flower Message-API strategy that runs one fedagg aggregation rule.

    ``rule`` is a built aggregator, or a factory that gets the
    :class:`AggregatorContext` once the strategy knows the number of clients
    (``num_clients``, or the number of nodes connected at the start) and of
    classes (``num_classes``, or the length of the ``label-hist`` the nodes
    report; 0 if none does).
    """

    def __init__(
        self,
        rule: Aggregator | RuleFactory,
        *,
        num_clients: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        participation: Availability | None = None,
        heterogeneity: Planner | None = None,
        instruction: ClientInstruction | None = None,
        fraction_evaluate: float = 1.0,
        min_available_nodes: int = 2,
        connect_timeout: float = 120.0,
        max_update_norm: float | None = None,
        assign_unknown_nodes: bool = True,
        evaluate_every: int = 1,
        evaluate_initial: bool = False,
    ) -> None:
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError(f"fraction_evaluate={fraction_evaluate} must be in [0, 1]")
        self._factory: RuleFactory | None = None if isinstance(rule, Aggregator) else rule
        self._aggregator: Aggregator | None = rule if isinstance(rule, Aggregator) else None
        self.num_clients = num_clients if self._aggregator is None else self._aggregator.ctx.num_clients
        self.num_classes = num_classes if self._aggregator is None else self._aggregator.ctx.num_classes
        self.seed = seed
        self.participation = participation
        self.heterogeneity = heterogeneity
        self.instruction = instruction
        self._encoded: dict[tuple[int, SimPlan, float | None], ConfigRecord] = {}  # instruction records, reused
        self.fraction_evaluate = float(fraction_evaluate)
        self.min_available_nodes = int(min_available_nodes)
        self.connect_timeout = float(connect_timeout)
        self.max_update_norm = max_update_norm
        self.assign_unknown_nodes = assign_unknown_nodes
        self.evaluate_every = max(1, int(evaluate_every))  # client-side evaluation every k rounds
        self.evaluate_initial = bool(evaluate_initial)  # ... and of the initial model (round 0)
        self.client_scores: dict[int, dict[int, tuple[float, float, int]]] = {}  # round -> client -> (acc, loss, n)
        self.node_of: Mapping[int, int] = {}  # client id -> Flower node id
        self.client_of: Mapping[int, int] = {}  # Flower node id -> client id
        self._told: set[int] = set()  # nodes that reported their partition-id themselves
        self._grid_ids = False  # the grid gave the map: every node's partition-id is known
        self.params: Params = {}  # the current global model
        self.last_record: RoundRecord | None = None
        self._arrays: ArrayRecord | None = None  # self.params as the ArrayRecord last handed out
        self._sent: dict[int, tuple[Message, Params]] = {}  # this round: client id -> (message, model sent)

    # -- the rule -----------------------------------------------------------------
    @property
    def aggregator(self) -> Aggregator:
        if self._aggregator is None:
            raise RuntimeError("the aggregator is built when the strategy first meets the grid (configure_train)")
        return self._aggregator

    def _build(self, num_nodes: int) -> None:
        if self._aggregator is not None or self._factory is None:
            return
        n = self.num_clients if self.num_clients is not None else num_nodes
        self.num_clients = n
        self.num_classes = self.num_classes or 0
        self._aggregator = self._factory(AggregatorContext(num_clients=n, num_classes=self.num_classes, seed=self.seed))

    # -- connection: wait for nodes, learn stable client ids -------------------------
    def connect(self, grid: Grid, wait: bool = True) -> None:
        """Learn the client id of every connected node. The first call waits until
        ``num_clients`` (or ``min_available_nodes``) nodes are up; later calls
        (``wait=False``) only pick up nodes that joined or reconnected since."""
        client_node_map = getattr(grid, "client_node_map", None)
        if callable(client_node_map):  # a simulation grid knows the map by construction: no query round
            self.node_of, self.client_of = client_node_map()
            self._grid_ids = True
            self._build(len(self.node_of))
            return
        need = self.num_clients if self.num_clients is not None else self.min_available_nodes
        deadline = time.time() + self.connect_timeout
        while wait and len(list(grid.get_node_ids())) < need:
            if time.time() > deadline:
                raise TimeoutError(
                    f"only {len(list(grid.get_node_ids()))} of {need} nodes connected within {self.connect_timeout}s"
                )
            time.sleep(0.05)
        todo = sorted(set(grid.get_node_ids()) - set(self.client_of))
        if not todo:
            return
        told: dict[int, int] = {}
        classes = 0
        config = self.instruction.encode() if self.instruction is not None else ConfigRecord()
        msgs = [Message(RecordDict({"config": config}), dst_node_id=n, message_type=MessageType.QUERY) for n in todo]
        for r in grid.send_and_receive(msgs, timeout=self.connect_timeout):
            node = r.metadata.src_node_id
            if r.has_error():
                log.info("node %s did not answer the id query: %s", node, (r.error.reason or "").strip()[-300:])
                continue
            m = r.content.metric_records.get("metrics")
            pid = None if m is None else m.get("partition-id")
            if isinstance(pid, int):
                told[node] = pid
                hist = m.get("label-hist") if m is not None else None
                if isinstance(hist, list):
                    classes = max(classes, len(hist))
        if self.num_classes is None and classes:
            self.num_classes = classes
        self._build(len(list(grid.get_node_ids())))
        n = int(self.num_clients or 0)
        for node, cid in told.items():
            if not 0 <= cid < n:
                log.warning("node %s says partition-id=%d, outside 0..%d; ignored", node, cid, n - 1)
                continue
            self._map(cid, node)
            self._told.add(node)
        silent = [x for x in todo if x not in told]
        if silent and self.assign_unknown_nodes:  # a foreign ClientApp: ids in node-id order
            free = [c for c in range(n) if c not in self.node_of]
            for node, cid in zip(silent, free):
                self._map(cid, node)
            if len(silent) > len(free):
                log.warning("%d node(s) beyond num_clients=%d get no client id", len(silent) - len(free), n)
        missing = sorted(set(range(n)) - set(self.node_of))
        if missing:
            log.warning("no node serves client id(s) %s yet", missing[:20])

    def _map(self, cid: int, node: int) -> None:
        assert isinstance(self.node_of, dict) and isinstance(self.client_of, dict)
        if cid in self.node_of and self.node_of[cid] != node:
            log.warning("client %d moved from node %s to node %s", cid, self.node_of[cid], node)
            self.client_of.pop(self.node_of[cid], None)
        self.node_of[cid], self.client_of[node] = node, cid

    def _sync(self, arrays: ArrayRecord) -> None:
        """Take ``arrays`` as the global model unless it is the one we handed out."""
        if arrays is not self._arrays:
            self.params = record_to_params(arrays)
            self._arrays = arrays

    def _config(self, config: ConfigRecord, server_round: int, cid: int, train: bool) -> ConfigRecord:
        out = ConfigRecord({**config, "server-round": server_round})
        extra = self.aggregator.client_config()
        mu = extra.get("proximal_mu")
        if mu is not None:
            out["proximal-mu"] = float(mu)  # Flower's FedProx key, for foreign ClientApps
        if self.instruction is not None:
            plan = SimPlan()
            if train and self.heterogeneity is not None:
                plan = SimPlan(**dict(self.heterogeneity.plan(server_round, cid)))  # type: ignore[arg-type]
            key = (server_round, plan, mu)
            enc = self._encoded.get(key)
            if enc is None:  # one JSON encoding per distinct plan in a round, not one per client
                if len(self._encoded) > 256:
                    self._encoded.clear()
                enc = self._encoded[key] = self.instruction.for_client(server_round, plan, mu).encode()
            out.update(enc)
        return out

    # -- the five Strategy methods ----------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.connect(grid, wait=self._aggregator is None)  # cheap when no node joined
        self._sync(arrays)
        agg = self.aggregator
        if self.participation is not None:  # O(asked) work per round, however many clients are registered
            available = np.asarray(self.participation.available(server_round), dtype=bool)
            asked = [c for c in np.flatnonzero(available).tolist() if c in self.node_of]
        else:
            asked = sorted(self.node_of)
        self._sent = {}
        for cid in asked:
            params = agg.params_for(cid, self.params)
            rec = arrays if not agg.per_node_models else params_to_record(params)
            msg = Message(RecordDict({"arrays": rec, "config": self._config(config, server_round, cid, True)}),
                          dst_node_id=self.node_of[cid], message_type=MessageType.TRAIN, group_id=str(server_round))
            self._sent[cid] = (msg, params)
        return [msg for msg, _ in self._sent.values()]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rec = self._aggregate(server_round, list(replies))
        self.last_record = rec
        self._arrays = params_to_record(self.params)
        metrics: dict[str, int | float | list[int] | list[float]] = {
            "num-asked": len(rec.asked), "num-replied": len(rec.replied),
            "num-failed": len(rec.failed), "num-rejected": len(rec.rejected),
        }
        if rec.train_loss is not None:
            metrics["train-loss"] = rec.train_loss
        for k, v in rec.agg_metrics.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) or (isinstance(v, list) and v and len({type(x) for x in v}) == 1):
                metrics[k] = v
        return self._arrays, MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0 or not self.node_of or server_round % self.evaluate_every:
            return []
        self._sync(arrays)
        agg = self.aggregator
        clients = sorted(self.node_of)
        if self.fraction_evaluate < 1.0:
            k = max(1, round(self.fraction_evaluate * len(clients)))
            clients = sorted(rng(self.seed, "evaluate-sample", server_round).choice(clients, size=k, replace=False).tolist())
        msgs = []
        for cid in clients:
            rec = arrays if not agg.per_node_models else params_to_record(agg.params_for(cid, self.params))
            msgs.append(Message(RecordDict({"arrays": rec, "config": self._config(config, server_round, cid, False)}),
                                dst_node_id=self.node_of[cid], message_type=MessageType.EVALUATE,
                                group_id=str(server_round)))
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted by ``num-examples``: the mean of every numeric metric the clients sent."""
        total = 0
        sums: dict[str, float] = {}
        count = 0
        for r in replies:
            if r.has_error() or "metrics" not in r.content.metric_records:
                continue
            m = r.content["metrics"]
            n = m.get("num-examples")
            if not isinstance(n, int) or n <= 0:
                continue
            count += 1
            total += n
            pid, acc, loss = m.get("partition-id"), m.get("accuracy"), m.get("loss")
            if isinstance(pid, int) and isinstance(acc, (int, float)):
                loss_f = float(loss) if isinstance(loss, (int, float)) else float("nan")
                self.client_scores.setdefault(server_round, {})[pid] = (float(acc), loss_f, n)
            for k, v in m.items():
                if k in ("num-examples", "partition-id") or isinstance(v, (bool, list)):
                    continue
                if isinstance(v, (int, float)) and np.isfinite(v):
                    sums[k] = sums.get(k, 0.0) + n * float(v)
        if not count:
            return None
        out = MetricRecord({k: v / total for k, v in sums.items()})
        out["num-examples"], out["num-replies"] = total, count
        if self.last_record is not None and self.last_record.round == server_round:
            self.last_record.client_eval = {k: float(v / total) for k, v in sums.items()}
        return out

    def summary(self) -> None:
        name = self._aggregator.name if self._aggregator is not None else "(built on connect)"
        log.info("fedagg strategy: aggregator=%s, %s clients", name, self.num_clients or "all connected")

    # -- the round's bookkeeping ---------------------------------------------------
    def _aggregate(self, rnd: int, replies: list[Message]) -> RoundRecord:
        by_msg: dict[str, Message] = {}
        chunks: list[Message] = []
        for m in replies:
            if chunk.is_chunk_reply(m):
                chunks.append(m)
            else:
                by_msg[m.metadata.reply_to_message_id] = m
        updates: list[ClientUpdate] = []
        failed: dict[int, str] = {}
        rejected: dict[int, str] = {}
        needs_hist = self.aggregator.name if self.aggregator.needs_label_hist else None
        rows = self._chunk_rows(chunks, needs_hist) if chunks else {}
        for cid, (msg, sent) in self._sent.items():
            mid = msg.metadata.message_id  # the grid set message_id when it pushed msg
            row = rows.get(mid)
            if row is not None:  # one client of a chunk reply
                if row.failed is not None:
                    failed[cid] = _failure(row.failed)
                elif row.rejected is not None:
                    rejected[cid] = row.rejected
                else:
                    why = self._echo_problem(row.pid, self.node_of[cid], cid)
                    if why:
                        rejected[cid] = why
                    else:
                        assert row.update is not None
                        updates.append(row.update)
                continue
            reply = by_msg.get(mid)
            if reply is None:
                failed[cid] = "no reply before the round timeout"
                continue
            if reply.has_error():
                failed[cid] = _failure(reply.error.reason)
                continue
            try:
                self._check_echo(reply, cid)
                updates.append(decode_train_reply(reply, cid, sent, self.num_classes or 0, self.max_update_norm,
                                                  needs_hist))
            except InvalidUpdate as e:
                rejected[cid] = str(e)
        for cid, why in failed.items():
            log.info("round %d: client %d failed: %s", rnd, cid, why)
        for cid, why in rejected.items():
            log.warning("round %d: update of client %d rejected: %s", rnd, cid, why)
        updates.sort(key=lambda u: u.client_id)
        asked = list(self._sent)
        info = RoundInfo(rnd, self.num_clients or 0, tuple(asked), tuple(u.client_id for u in updates))
        if not updates:
            log.warning("round %d: no valid update arrived; the global model is unchanged", rnd)
        self.params, agg_metrics = self.aggregator.apply(self.params, updates, info)
        n = np.array([u.num_examples for u in updates], dtype=float)
        losses = [u.train_loss for u in updates]
        train_loss = None
        if updates and all(x is not None for x in losses):
            train_loss = float(np.dot(n, np.array(losses, dtype=float)) / n.sum())
        return RoundRecord(rnd, asked, list(info.replied), failed, rejected, train_loss, agg_metrics)

    def _check_echo(self, reply: Message, cid: int) -> None:
        m = reply.content.metric_records.get(METRICS)
        pid = None if m is None else m.get(PARTITION_ID)
        why = self._echo_problem(pid, reply.metadata.src_node_id, cid)
        if why:
            raise InvalidUpdate(why)

    def _echo_problem(self, pid: object, node: int, cid: int) -> str | None:
        told = self._grid_ids or node in self._told
        if pid is not None and told and pid != cid:
            return f"the reply says {PARTITION_ID}={pid}, but its node serves client {cid}"
        return None

    def _chunk_rows(self, replies: list[Message], needs_hist: str | None) -> dict[str, chunk.Row]:
        """Each client's outcome in the chunk replies (fedagg's grids), by the id of its message."""
        sent = {msg.metadata.message_id: (cid, params) for cid, (msg, params) in self._sent.items()}
        rows: dict[str, chunk.Row] = {}
        for r in replies:
            rows.update(chunk.updates(r, sent, self.num_classes or 0, self.max_update_norm, needs_hist))
        return rows

    # -- the loop -------------------------------------------------------------------
    def start(  # type: ignore[override]  # Flower's signature, plus callbacks and a start round
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float | None = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        *,
        callbacks: Sequence[RoundCallback] = (),
        start_round: int = 1,
    ) -> Result:
        """Flower's ``Strategy.start`` (same rounds, same Result), plus
        ``callbacks`` around each round and ``start_round`` to continue a
        resumed run (the strategy's and the rule's state restored first)."""
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        self._arrays = None
        self._sync(initial_arrays)
        self.connect(grid)
        if hasattr(grid, "chunk_replies"):  # fedagg's grids: a chunk's reply as it is, read in aggregate_train
            grid.chunk_replies = True
        self.summary()
        for cb in callbacks:
            cb.on_train_begin(self, start_round=start_round, num_rounds=num_rounds)
        if evaluate_fn is not None and start_round == 1:
            res = evaluate_fn(0, initial_arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res
        if start_round == 1 and self.evaluate_initial:  # client-side evaluation of the initial model (round 0)
            msgs = list(self.configure_evaluate(0, initial_arrays, evaluate_config, grid))
            if msgs:
                ev = self.aggregate_evaluate(0, grid.send_and_receive(msgs, timeout=timeout))
                if ev is not None:
                    result.evaluate_metrics_clientapp[0] = ev
        arrays = initial_arrays
        result.arrays = arrays
        for rnd in range(start_round, num_rounds + 1):
            t0 = time.perf_counter()
            msgs = list(self.configure_train(rnd, arrays, train_config, grid))
            replies = list(grid.send_and_receive(msgs, timeout=timeout)) if msgs else []
            new, train_metrics = self.aggregate_train(rnd, replies)
            if new is not None:
                arrays = result.arrays = new
            if train_metrics is not None:
                result.train_metrics_clientapp[rnd] = train_metrics
            msgs = list(self.configure_evaluate(rnd, arrays, evaluate_config, grid))
            if msgs:
                ev = self.aggregate_evaluate(rnd, grid.send_and_receive(msgs, timeout=timeout))
                if ev is not None:
                    result.evaluate_metrics_clientapp[rnd] = ev
            record = self.last_record
            assert record is not None
            if evaluate_fn is not None:
                res = evaluate_fn(rnd, arrays)
                if res is not None:
                    result.evaluate_metrics_serverapp[rnd] = res
                    loss, acc = res.get("loss"), res.get("accuracy")
                    record.test_loss = float(loss) if isinstance(loss, (int, float)) else None
                    record.test_accuracy = float(acc) if isinstance(acc, (int, float)) else None
            record.seconds = time.perf_counter() - t0
            stop = [cb.after_round(record, self) for cb in callbacks]
            if any(stop):
                log.info("round %d: a callback stopped training", rnd)
                break
        for cb in callbacks:
            cb.on_train_end(self, result)
        return result
