"""The Strategy host: one Flower ``Strategy`` that runs any registered
aggregator. How a round flows, in one file:

1. the environment says which clients are available (``participation``);
2. ``configure_train`` builds one Message per asked client: the global model
   (or, for gossip, that node's own model) and the config, including the
   simulation's instructions for that client (``heterogeneity``);
3. the grid delivers them and returns the replies that arrived in time;
4. ``aggregate_train`` validates each reply at the boundary (codec), turns
   valid ones into ``ClientUpdate`` values keyed by the stable client id, and
   hands them to the aggregator with a ``RoundInfo`` of what was observed;
5. the new global model is evaluated on the server's test set, one metrics
   row is written, and a checkpoint is taken every k rounds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..aggregators.base import Aggregator, ClientUpdate, Params, RoundInfo
from .codec import InvalidUpdate, params_to_record, reply_to_update, to_config

log = logging.getLogger("fedagg")


@dataclass
class RoundRecord:
    round: int
    asked: list[int]
    replied: list[int]
    failed: dict[int, str]  # client -> reason (no reply, client error)
    rejected: dict[int, str]  # client -> validation reason
    train_loss: float | None
    agg_metrics: dict[str, Any]
    test_loss: float | None = None
    test_accuracy: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class AggregationHost(Strategy):
    def __init__(
        self,
        aggregator: Aggregator,
        participation: Any,
        heterogeneity: Any,
        num_clients: int,
        num_classes: int,
        base_config: dict[str, Any],
        evaluate_fn: Callable[[Params], tuple[float, float]] | None = None,
        round_timeout: float | None = None,
        connect_timeout: float = 120.0,
        max_update_norm: float | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.participation = participation
        self.heterogeneity = heterogeneity
        self.num_clients = num_clients
        self.num_classes = num_classes
        self.base_config = dict(base_config)
        self.evaluate_fn = evaluate_fn
        self.round_timeout = round_timeout
        self.connect_timeout = connect_timeout
        self.max_update_norm = max_update_norm
        self.node_of: Mapping[int, int] = {}  # client id -> Flower node id
        self.client_of: Mapping[int, int] = {}  # Flower node id -> client id
        self.params: Params = {}
        self._sent: dict[int, tuple[Message, Params]] = {}  # this round: client id -> (message, model sent)

    # -- connection: wait for nodes (pitfall P1), learn stable client ids ----
    def connect(self, grid: Grid, wait: bool = True) -> None:
        """Learn the client id of every connected node. The first call waits
        until ``num_clients`` nodes are up; later calls (``wait=False``) only
        pick up nodes that joined or reconnected since."""
        if hasattr(grid, "client_node_map"):  # a simulation grid knows the map by construction: no query round
            self.node_of, self.client_of = grid.client_node_map()
            return
        deadline = time.time() + self.connect_timeout
        while wait and len(list(grid.get_node_ids())) < self.num_clients:
            if time.time() > deadline:
                raise TimeoutError(
                    f"only {len(list(grid.get_node_ids()))} of num_clients={self.num_clients} nodes "
                    f"connected within {self.connect_timeout}s"
                )
            time.sleep(0.05)
        todo = set(grid.get_node_ids()) - set(self.client_of)
        if not todo:
            return
        cfg = to_config(self.base_config)
        msgs = [Message(RecordDict({"config": cfg}), dst_node_id=n, message_type=MessageType.QUERY) for n in sorted(todo)]
        for r in grid.send_and_receive(msgs, timeout=self.connect_timeout):
            if r.has_error():
                log.warning("node %s failed the id query: %s", r.metadata.src_node_id, r.error.reason)
                continue
            m = r.content["metrics"]
            cid, node = int(m["partition-id"]), r.metadata.src_node_id
            if cid in self.node_of and self.node_of[cid] != node:
                log.warning("client %d moved from node %s to node %s", cid, self.node_of[cid], node)
                self.client_of.pop(self.node_of[cid], None)
            self.node_of[cid], self.client_of[node] = node, cid
        missing = sorted(set(range(self.num_clients)) - set(self.node_of))
        if missing:
            log.warning("no node serves client id(s) %s yet", missing[:20])

    # -- the five Strategy methods -----------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        available = np.asarray(self.participation.available(server_round), dtype=bool)
        asked = [c for c in np.flatnonzero(available).tolist() if c in self.node_of]
        shared = arrays if not self.aggregator.per_node_models else None
        self._sent = {}
        extra = {**self.aggregator.client_config()}
        for cid in asked:
            plan = self.heterogeneity.plan(server_round, cid)
            cfg = to_config({**config, **extra, **{f"sim.{k}": v for k, v in plan.items()}})
            params = self.aggregator.params_for(cid, self.params)
            rec = shared if shared is not None else params_to_record(params)
            msg = Message(RecordDict({"arrays": rec, "config": cfg}), dst_node_id=self.node_of[cid],
                          message_type=MessageType.TRAIN, group_id=str(server_round))
            self._sent[cid] = (msg, params)
        return [msg for msg, _ in self._sent.values()]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rec = self._aggregate(server_round, list(replies))
        return None, MetricRecord({"replied": len(rec.replied)})

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # evaluation is server-side, on the held-out test set

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info("fedagg host: aggregator=%s, %d clients", self.aggregator.name, self.num_clients)

    # -- internals ------------------------------------------------------------
    def _aggregate(self, rnd: int, replies: list[Message]) -> RoundRecord:
        by_msg = {m.metadata.reply_to_message_id: m for m in replies}
        updates: list[ClientUpdate] = []
        failed: dict[int, str] = {}
        rejected: dict[int, str] = {}
        for cid, (msg, sent) in self._sent.items():
            reply = by_msg.get(msg.metadata.message_id)  # the grid set message_id when it pushed msg
            if reply is None:
                failed[cid] = "no reply before the round timeout"
                continue
            if reply.has_error():
                failed[cid] = f"client error: {reply.error.reason.strip().splitlines()[-1][:300] if reply.error.reason else 'unknown'}"
                continue
            try:
                updates.append(reply_to_update(reply, cid, sent, self.num_classes, self.max_update_norm))
            except InvalidUpdate as e:
                rejected[cid] = str(e)
        for cid, why in failed.items():
            log.info("round %d: client %d failed: %s", rnd, cid, why)
        for cid, why in rejected.items():
            log.warning("round %d: update of client %d rejected: %s", rnd, cid, why)
        updates.sort(key=lambda u: u.client_id)
        asked = list(self._sent)
        info = RoundInfo(rnd, self.num_clients, tuple(asked), tuple(u.client_id for u in updates))
        if not updates:
            log.warning("round %d: no valid update arrived; the global model is unchanged", rnd)
        new_params, agg_metrics = self.aggregator.apply(self.params, updates, info)
        self.params = new_params
        n = np.array([u.num_examples for u in updates], dtype=float)
        losses = [u.train_loss for u in updates]
        train_loss = float(np.dot(n, losses) / n.sum()) if updates and None not in losses else None
        return RoundRecord(rnd, asked, list(info.replied), failed, rejected, train_loss, agg_metrics)

    def run_round(self, grid: Grid, rnd: int) -> RoundRecord:
        t0 = time.perf_counter()
        self.connect(grid, wait=False)  # picks up late or reconnected nodes; cheap when nothing changed
        msgs = list(self.configure_train(rnd, params_to_record(self.params) if not self.aggregator.per_node_models else ArrayRecord(), {**self.base_config, "round": rnd}, grid))
        replies = list(grid.send_and_receive(msgs, timeout=self.round_timeout)) if msgs else []
        rec = self._aggregate(rnd, replies)
        if self.evaluate_fn is not None:
            rec.test_loss, rec.test_accuracy = self.evaluate_fn(self.params)
        rec.seconds = time.perf_counter() - t0
        return rec
