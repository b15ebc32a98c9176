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
(fedagg's simulation grids: ``grid.client_node_map()``) says so; a strategy
driving fedagg's own ClientApp (``instruction`` given: that app has a query
handler) sends every node a QUERY before round 1 and uses the
``partition-id`` it answers. Any other ClientApp is sent only what Flower's
own strategies send (train and evaluate messages): its nodes get ids in the
order of their node ids, and a node whose first train reply echoes a
``partition-id`` is moved to that id from then on (in that round already).
A train reply that echoes a ``partition-id`` must match what its node said
before. Replies are matched to the clients asked by their node id (and the
round in ``group_id``, when the reply carries one), so a caller or a Flower
wrapper that rebuilds the messages does not lose them.

Flower's constructor options (``fraction_train``, ``min_train_nodes``,
``weighted_by_key``, the record keys, the metric hooks, ...) are
:class:`~fedagg.flower.options.FlowerOptions`; that module says how
``fraction_train`` composes with fedagg's participation patterns.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

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
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info

from ..aggregators.base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    InvalidUpdate,
    Metrics,
    Params,
    RoundInfo,
    missing_hist_problem,
)
from ..outcomes import FailureWatch
from ..seeding import rng
from . import chunk
from .callbacks import RoundCallback
from .client_state import RULE_SERVER, rule_extras
from .codec import params_to_record, record_to_params
from .metrics import aggregate_reply_metrics
from .options import FlowerOptions
from .protocol import (
    METRICS,
    PARTITION_ID,
    ClientInstruction,
    SimPlan,
    decode_train_reply,
    example_count,
    single_record,
)

log = logging.getLogger("fedagg")
flwr_log = logging.getLogger("flwr")  # the per-round lines Flower's own strategies print

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


def _error_line(reason: str | None) -> str:
    """A client's error, as the round's record says it: the last line of its reason."""
    lines = (reason or "").strip().splitlines()
    return f"client error: {lines[-1][:300] if lines else 'unknown'}"


class FedaggStrategy(Strategy):
    """A Flower Message-API strategy that runs one fedagg aggregation rule.

    ``rule`` is a built aggregator, or a factory that gets the
    :class:`AggregatorContext` once the strategy knows the number of clients
    (``num_clients``, or the number of nodes connected at the start) and of
    classes (``num_classes``, or the length of the ``label-hist`` fedagg's
    ClientApp reports in its query reply; 0 otherwise).

    ``options`` are Flower's FedAvg constructor options (:class:`FlowerOptions`).
    :meth:`start` stops with :class:`~fedagg.outcomes.RunFailed` naming the
    first reason when every asked client failed or was rejected in
    ``max_failed_rounds`` consecutive rounds (0: never). ``log_rounds``
    prints Flower's per-round lines on the ``flwr`` logger.
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
        options: FlowerOptions | None = None,
        connect_timeout: float = 120.0,
        max_update_norm: float | None = None,
        assign_unknown_nodes: bool = True,
        evaluate_every: int = 1,
        evaluate_initial: bool = False,
        max_failed_rounds: int = 3,
        log_rounds: bool = True,
    ) -> None:
        if isinstance(max_failed_rounds, bool) or not isinstance(max_failed_rounds, int) or max_failed_rounds < 0:
            raise ValueError(f"max_failed_rounds={max_failed_rounds!r} must be a non-negative integer (0 = never stop)")
        self.options = options if options is not None else FlowerOptions()
        self._factory: RuleFactory | None = None if isinstance(rule, Aggregator) else rule
        self._aggregator: Aggregator | None = rule if isinstance(rule, Aggregator) else None
        self.num_clients = num_clients if self._aggregator is None else self._aggregator.ctx.num_clients
        self.num_classes = num_classes if self._aggregator is None else self._aggregator.ctx.num_classes
        self.seed = seed
        self.participation = participation
        self.heterogeneity = heterogeneity
        self.instruction = instruction
        self._encoded: dict[tuple[int, SimPlan, float | None], ConfigRecord] = {}  # instruction records, reused
        self.connect_timeout = float(connect_timeout)
        self.max_update_norm = max_update_norm
        self.assign_unknown_nodes = assign_unknown_nodes
        self.evaluate_every = max(1, int(evaluate_every))  # client-side evaluation every k rounds
        self.evaluate_initial = bool(evaluate_initial)  # ... and of the initial model (round 0)
        self.max_failed_rounds = max_failed_rounds
        self.log_rounds = bool(log_rounds)
        self.client_scores: dict[int, dict[int, tuple[float, float, int]]] = {}  # round -> client -> (acc, loss, n)
        self.node_of: Mapping[int, int] = {}  # client id -> Flower node id
        self.client_of: Mapping[int, int] = {}  # Flower node id -> client id
        self._told: set[int] = set()  # nodes that reported their partition-id themselves
        self._grid_ids = False  # the grid gave the map: every node's partition-id is known
        self.params: Params = {}  # the current global model
        self.last_record: RoundRecord | None = None
        self._arrays: ArrayRecord | None = None  # self.params as the ArrayRecord last handed out
        self._sent: dict[int, tuple[int, Params]] = {}  # this round: node id -> (client id, model sent)
        self._round = 0  # the round of self._sent
        self._reply_metrics = MetricRecord()  # this round's replies' own metrics, aggregated as Flower does
        self._said_no_update = False  # the "no valid update arrived" warning was given

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
        need = self.num_clients if self.num_clients is not None else self.options.min_available_nodes
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
        told, classes = self._query(grid, todo) if self.instruction is not None else ({}, 0)
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

    def _query(self, grid: Grid, todo: list[int]) -> tuple[dict[int, int], int]:
        """Ask fedagg's ClientApp on ``todo`` for its partition-id: (node -> id, number of classes seen)."""
        told: dict[int, int] = {}
        classes = 0
        assert self.instruction is not None
        config = self.instruction.encode()
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
        return told, classes

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

    def _configs(self, config: ConfigRecord, server_round: int, train: bool) -> Callable[[int], ConfigRecord]:
        """The config of each client this round (a function of the client id): one
        ConfigRecord per distinct instruction, shared by the clients it is for, as
        Flower's own strategies share one record among a round's messages."""
        mu = self.aggregator.client_config().get("proximal_mu")
        made: dict[SimPlan, ConfigRecord] = {}

        def of(cid: int) -> ConfigRecord:
            plan = SimPlan()
            if train and self.instruction is not None and self.heterogeneity is not None:
                plan = SimPlan(**dict(self.heterogeneity.plan(server_round, cid)))  # type: ignore[arg-type]
            out = made.get(plan)
            if out is None:
                out = made[plan] = self._config(config, server_round, plan, mu)
            return out

        return of

    def _config(self, config: ConfigRecord, server_round: int, plan: SimPlan, mu: float | None) -> ConfigRecord:
        out = ConfigRecord({**config, "server-round": server_round})
        if mu is not None:
            out["proximal-mu"] = float(mu)  # Flower's FedProx key, for foreign ClientApps
        if self.instruction is not None:
            key = (server_round, plan, mu)
            enc = self._encoded.get(key)
            if enc is None:  # one JSON encoding per distinct plan in a round, not one per client
                if len(self._encoded) > 256:
                    self._encoded.clear()
                terms = self.aggregator.client_terms() or None
                enc = self._encoded[key] = self.instruction.for_client(server_round, plan, mu, terms).encode()
            out.update(enc)
        return out

    # -- the five Strategy methods ----------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.connect(grid, wait=self._aggregator is None)  # cheap when no node joined
        self._sync(arrays)
        opts = self.options
        if self.participation is not None:  # O(asked) work per round, however many clients are registered
            available = np.asarray(self.participation.available(server_round), dtype=bool)
            eligible = [c for c in np.flatnonzero(available).tolist() if c in self.node_of]
        else:
            eligible = sorted(self.node_of)
        k = opts.train_sample_size(len(eligible))
        asked = eligible
        if k < len(eligible):  # fraction_train / min_train_nodes sample among the available clients
            asked = sorted(rng(self.seed, "train-sample", server_round).choice(eligible, size=k, replace=False).tolist())
        msgs = self.train_messages(server_round, asked, arrays, config)
        if self.log_rounds:
            flwr_log.info("configure_train: Sampled %s nodes (out of %s)", len(msgs), len(eligible))
        return msgs

    def train_messages(self, server_round: int, clients: Sequence[int], arrays: ArrayRecord,
                       config: ConfigRecord, model: Params | None = None) -> list[Message]:
        """One TRAIN message per client of ``clients`` with ``arrays`` (the asynchronous modes' batch of jobs
        sent one model version; ``configure_train``'s asked clients); they become the clients of this round.
        ``model``: the global model ``arrays`` holds, when it is not the current one (an asynchronous job
        dispatched at an earlier version, trained later)."""
        agg, opts = self.aggregator, self.options
        self._sent, self._round = {}, server_round
        msgs = []
        base = self.params if model is None else model
        srv = agg.server_arrays(base)  # a rule's arrays for every client (SCAFFOLD's c): one record
        srv_rec = params_to_record(srv) if srv else None
        config_of = self._configs(config, server_round, True)
        for cid in clients:
            params = agg.params_for(cid, base)
            rec = arrays if not agg.per_node_models else params_to_record(params)
            node = self.node_of[cid]
            content = RecordDict({opts.arrayrecord_key: rec, opts.configrecord_key: config_of(cid)})
            if srv_rec is not None:
                content[RULE_SERVER] = srv_rec
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                                group_id=str(server_round)))
            self._sent[node] = (cid, params)
        return msgs

    def sent_jobs(self) -> dict[int, tuple[int, Params]]:
        """What the last :meth:`train_messages` sent: node id -> (client id, model sent)."""
        return dict(self._sent)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rec = self._aggregate(server_round, list(replies))
        self.last_record = rec
        self._arrays = params_to_record(self.params)
        if self.log_rounds:
            flwr_log.info("aggregate_train: Received %s results and %s failures (%s rejected)",
                          len(rec.replied), len(rec.failed), len(rec.rejected))
        metrics = MetricRecord(dict(self._reply_metrics))  # the replies' own metrics (Flower's weighted mean) ...
        metrics.update({  # ... and fedagg's scalars of the round
            "num-asked": len(rec.asked), "num-replied": len(rec.replied),
            "num-failed": len(rec.failed), "num-rejected": len(rec.rejected),
        })
        if rec.train_loss is not None:
            metrics["train-loss"] = rec.train_loss
        for k, v in rec.agg_metrics.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) or (isinstance(v, list) and v and len({type(x) for x in v}) == 1):
                metrics[k] = v
        return self._arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        opts = self.options
        if opts.fraction_evaluate == 0.0 or not self.node_of or server_round % self.evaluate_every:
            return []
        self._sync(arrays)
        agg = self.aggregator
        clients = sorted(self.node_of)
        k = opts.evaluate_sample_size(len(clients))
        if k < len(clients):
            clients = sorted(rng(self.seed, "evaluate-sample", server_round).choice(clients, size=k, replace=False).tolist())
        msgs = []
        config_of = self._configs(config, server_round, False)
        for cid in clients:
            rec = arrays if not agg.per_node_models else params_to_record(agg.params_for(cid, self.params))
            msgs.append(Message(RecordDict({opts.arrayrecord_key: rec, opts.configrecord_key: config_of(cid)}),
                                dst_node_id=self.node_of[cid], message_type=MessageType.EVALUATE,
                                group_id=str(server_round)))
        if self.log_rounds:
            flwr_log.info("configure_evaluate: Sampled %s nodes (out of %s)", len(msgs), len(self.node_of))
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The replies' metrics, weighted by the example count (Flower's mean, lists
        element-wise; ``evaluate_metrics_aggr_fn`` replaces it), plus ``num-examples``
        (their sum) and ``num-replies``."""
        key = self.options.weighted_by_key
        contents: list[RecordDict] = []
        records: list[MetricRecord] = []
        counts: list[int] = []
        errors = 0
        for r in replies:
            node = r.metadata.src_node_id
            if r.has_error():
                errors += 1
                log.info("round %d: evaluation on node %s failed: %s", server_round, node,
                         (r.error.reason or "").strip()[-300:])
                continue
            try:
                m = single_record(r.content.metric_records, "metrics", "MetricRecord")
                n = example_count(m, key)
            except InvalidUpdate as e:
                log.warning("round %d: evaluation reply of node %s ignored: %s", server_round, node, e)
                continue
            contents.append(r.content)
            records.append(m)
            counts.append(n)
            pid, acc, loss = m.get("partition-id", self.client_of.get(node)), m.get("accuracy"), m.get("loss")
            if isinstance(pid, int) and isinstance(acc, (int, float)):
                loss_f = float(loss) if isinstance(loss, (int, float)) else float("nan")
                self.client_scores.setdefault(server_round, {})[pid] = (float(acc), loss_f, n)
        if self.log_rounds:
            flwr_log.info("aggregate_evaluate: Received %s results and %s failures", len(contents), errors)
        if not contents:
            return None
        out = aggregate_reply_metrics(self.options.evaluate_metrics_aggr_fn, contents, records, counts, key)
        out["num-examples"], out["num-replies"] = sum(counts), len(counts)
        if self.last_record is not None and self.last_record.round == server_round:
            self.last_record.client_eval = {k: float(v) for k, v in out.items()
                                            if isinstance(v, (int, float)) and k not in ("num-examples", "num-replies")}
        return out

    def summary(self) -> None:
        name = self._aggregator.name if self._aggregator is not None else "(built on connect)"
        log.info("fedagg strategy: aggregator=%s, %s clients", name, self.num_clients or "all connected")
        if self.log_rounds:
            o = self.options
            flwr_log.info("\t├──> fedagg rule: %s (%s clients)", name, self.num_clients or "all connected")
            flwr_log.info("\t├──> Sampling: fraction train (%.2f) | evaluate (%.2f); minimum nodes train (%d) | "
                          "evaluate (%d) | available (%d)", o.fraction_train, o.fraction_evaluate, o.min_train_nodes,
                          o.min_evaluate_nodes, o.min_available_nodes)
            flwr_log.info("\t└──> Keys in records: weighted by '%s', ArrayRecord '%s', ConfigRecord '%s'",
                          o.weighted_by_key, o.arrayrecord_key, o.configrecord_key)

    # -- the round's bookkeeping ---------------------------------------------------
    def _replies_by_node(self, rnd: int, replies: list[Message]) -> dict[int, Message]:
        """This round's replies keyed by the node that sent them: one per asked node;
        replies from nodes not asked, of another round, or a node's second reply are dropped."""
        out: dict[int, Message] = {}
        for r in replies:
            node, group = r.metadata.src_node_id, r.metadata.group_id
            if node not in self._sent or (group and group != str(rnd)) or node in out:
                log.info("round %d: ignored a reply from node %s (group %r): not one this round asked for",
                         rnd, node, group)
                continue
            out[node] = r
        return out

    def _learn_ids(self, by_node: Mapping[int, Message]) -> None:
        """A foreign ClientApp's train reply that echoes ``partition-id`` moves its
        node to that client id (the node-order id it had was provisional)."""
        if self._grid_ids or self.instruction is not None:
            return
        n = int(self.num_clients or 0)
        assert isinstance(self.node_of, dict) and isinstance(self.client_of, dict)
        for node, r in by_node.items():
            if node in self._told or r.has_error():
                continue
            pid = _echoed_id(r)
            if pid is None or not 0 <= pid < n:
                continue
            cid, sent = self._sent[node]
            other = self.node_of.get(pid)
            if pid != cid and other in self._told:  # another node already said it serves pid:
                self._told.add(node)  # ... keep this node's id, so _check_echo rejects the reply
                continue
            if pid != cid:  # swap the provisional ids of the two nodes
                self.node_of[pid], self.client_of[node] = node, pid
                if other is not None:
                    self.node_of[cid], self.client_of[other] = other, cid
                    if other in self._sent:
                        self._sent[other] = (cid, self._sent[other][1])
                else:
                    self.node_of.pop(cid, None)
                self._sent[node] = (pid, sent)
            self._told.add(node)

    def _aggregate(self, rnd: int, replies: list[Message]) -> RoundRecord:
        if rnd != self._round:
            log.warning("round %d: aggregate_train after configure_train of round %d", rnd, self._round)
        updates, accepted, failed, rejected = self.collect(rnd, replies)
        opts = self.options
        asked = sorted(cid for cid, _ in self._sent.values())
        info = RoundInfo(rnd, self.num_clients or 0, tuple(asked), tuple(u.client_id for u in updates))
        if not updates and not self._said_no_update:  # once per run: metrics.csv has every round's counts
            self._said_no_update = True
            log.warning("round %d: no valid update arrived; the global model is unchanged (said once per run; "
                        "metrics.csv's clients_replied and clients_rejected show every round)", rnd)
        self.params, agg_metrics = self.aggregator.apply(self.params, updates, info)
        self._reply_metrics = aggregate_reply_metrics(
            opts.train_metrics_aggr_fn, [a[0] for a in accepted], [a[1] for a in accepted],
            [u.num_examples for u in updates], opts.weighted_by_key)
        return RoundRecord(rnd, asked, list(info.replied), failed, rejected, train_loss_of(updates), agg_metrics)

    def collect(self, rnd: int, replies: list[Message], jobs: Mapping[int, tuple[int, Params]] | None = None
                ) -> tuple[list[ClientUpdate], list[tuple[RecordDict | None, Mapping[str, Any]]], dict[int, str],
                           dict[int, str]]:
        """The round's replies checked at the boundary: the valid updates sorted by client id (with each one's
        reply content and metrics), and the clients that failed or were rejected, with why. ``jobs``: the
        messages these replies answer (node id -> (client id, model sent), from :meth:`sent_jobs` after the
        ``train_messages`` that made them; the real-time asynchronous loop collects one job at a time);
        default: the last ``train_messages``'."""
        if jobs is not None:
            self._sent, self._round = dict(jobs), rnd
        chunks = [m for m in replies if chunk.is_chunk_reply(m)]
        by_node = self._replies_by_node(rnd, [m for m in replies if not chunk.is_chunk_reply(m)])
        self._learn_ids(by_node)
        updates: list[ClientUpdate] = []
        accepted: list[tuple[RecordDict | None, Mapping[str, Any]]] = []  # (reply content, its metrics) per update
        failed: dict[int, str] = {}
        rejected: dict[int, str] = {}
        opts = self.options
        needs_hist = self.aggregator.name if self.aggregator.needs_label_hist else None
        rows = self._chunk_rows(rnd, chunks, needs_hist) if chunks else {}
        for node, (cid, sent) in self._sent.items():
            row = rows.get(node)
            if row is not None:  # one client of a chunk reply (fedagg's grids)
                if row.failed is not None:
                    failed[cid] = _error_line(row.failed)
                elif row.rejected is not None:
                    rejected[cid] = row.rejected
                else:
                    why = self._echo_problem(row.pid, node, cid)
                    if not why and row.update is not None:
                        why = self.aggregator.update_problem(row.update)  # what the rule needs besides the contract
                    if why:
                        rejected[cid] = why
                    else:
                        assert row.update is not None and row.metrics is not None
                        updates.append(row.update)
                        accepted.append((None, row.metrics))
                continue
            reply = by_node.get(node)
            why = _failure(reply)
            if why is not None or reply is None:
                failed[cid] = why or ""
                continue
            try:
                self._check_echo(reply, cid)
                u = decode_train_reply(reply, cid, sent, self.num_classes or 0, self.max_update_norm, needs_hist,
                                       weight_key=opts.weighted_by_key, arrays_key=opts.arrayrecord_key)
                extras = rule_extras(reply)
                if extras is not None:
                    u = replace(u, extras=extras)
                why = self.aggregator.update_problem(u)  # what the rule needs besides the contract (FedNova: steps)
                if why:
                    raise InvalidUpdate(why)
                updates.append(u)
                accepted.append((reply.content, single_record(reply.content.metric_records, METRICS, "MetricRecord")))
            except InvalidUpdate as e:
                rejected[cid] = str(e)
        if needs_hist and not self.num_classes:  # a foreign app's histograms are read once the number is known
            hint = missing_hist_problem(needs_hist)
            rejected = {c: w + " (pass num_classes= to strategy_for)" if w == hint else w for c, w in rejected.items()}
        for cid, why in failed.items():
            log.info("round %d: client %d failed: %s", rnd, cid, why)
        for cid, why in rejected.items():
            log.warning("round %d: update of client %d rejected: %s", rnd, cid, why)
        order = sorted(range(len(updates)), key=lambda i: updates[i].client_id)
        return [updates[i] for i in order], [accepted[i] for i in order], failed, rejected

    def _check_echo(self, reply: Message, cid: int) -> None:
        why = self._echo_problem(_echoed_id(reply), reply.metadata.src_node_id, cid)
        if why:
            raise InvalidUpdate(why)

    def _echo_problem(self, pid: object, node: int, cid: int) -> str | None:
        told = self._grid_ids or node in self._told
        if pid is not None and told and pid != cid:
            return f"the reply says {PARTITION_ID}={pid}, but its node serves client {cid}"
        return None

    def _chunk_rows(self, rnd: int, replies: list[Message], needs_hist: str | None) -> dict[int, chunk.Row]:
        """Each asked node's outcome in this round's chunk replies (fedagg's grids), by node id."""
        rows: dict[int, chunk.Row] = {}
        for r in replies:
            if r.metadata.group_id and r.metadata.group_id != str(rnd):
                log.info("round %d: ignored a chunk reply of round %s", rnd, r.metadata.group_id)
                continue
            nodes = chunk.message_nodes(r)  # message id -> the node it was sent to
            sent = {mid: self._sent[node] for mid, node in nodes.items() if node in self._sent and node not in rows}
            for mid, row in chunk.updates(r, sent, self.num_classes or 0, self.max_update_norm, needs_hist).items():
                rows[nodes[mid]] = row
        return rows

    # -- the loop -------------------------------------------------------------------
    def start(  # type: ignore[override]  # Flower's signature, plus callbacks, a start round and a wrapper
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
        via: Strategy | None = None,
    ) -> Result:
        """Flower's ``Strategy.start`` (same rounds, same Result, the same log
        lines), plus ``callbacks`` around each round, ``start_round`` to
        continue a resumed run (the strategy's and the rule's state restored
        first) and ``via``: a Flower wrapper around this strategy (e.g.
        ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``) whose
        five methods then run the rounds; a wrapper's ``noise_multiplier`` and
        ``clipping_norm`` join the round's metrics as ``dp_noise_multiplier``
        and ``dp_clipping_norm``. Raises :class:`~fedagg.outcomes.RunFailed`
        after ``max_failed_rounds`` consecutive rounds in which every asked
        client failed or was rejected, and at the end of a run that never
        accepted an update."""
        driver: Strategy = self if via is None else via
        watch = FailureWatch(self.max_failed_rounds, option="max_failed_rounds")
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        t_start = time.time()
        self._arrays = None
        self._sync(initial_arrays)
        self.connect(grid)
        if hasattr(grid, "chunk_replies"):  # fedagg's grids: a chunk's reply as it is, read in aggregate_train
            # ... unless a wrapper or a user's metrics hook must read the per-client replies
            grid.chunk_replies = via is None and self.options.train_metrics_aggr_fn is None
        if self.log_rounds:
            flwr_log.info("Starting %s strategy:", type(driver).__name__)
            log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
        driver.summary()
        for cb in callbacks:
            cb.on_train_begin(self, start_round=start_round, num_rounds=num_rounds)
        if evaluate_fn is not None and start_round == 1:
            res = evaluate_fn(0, initial_arrays)
            if self.log_rounds:
                flwr_log.info("Initial global evaluation results: %s", res)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res
        if start_round == 1 and self.evaluate_initial:  # client-side evaluation of the initial model (round 0)
            msgs = list(driver.configure_evaluate(0, initial_arrays, evaluate_config, grid))
            if msgs:
                ev = driver.aggregate_evaluate(0, grid.send_and_receive(msgs, timeout=timeout))
                if ev is not None:
                    result.evaluate_metrics_clientapp[0] = ev
        arrays = initial_arrays
        result.arrays = arrays
        for rnd in range(start_round, num_rounds + 1):
            t0 = time.perf_counter()
            if self.log_rounds:
                flwr_log.info("")
                flwr_log.info("[ROUND %s/%s]", rnd, num_rounds)
            self.last_record = None
            msgs = list(driver.configure_train(rnd, arrays, train_config, grid))
            replies = list(grid.send_and_receive(msgs, timeout=timeout)) if msgs else []
            new, train_metrics = driver.aggregate_train(rnd, replies)
            if new is not None:
                arrays = result.arrays = new
                self._sync(new)  # a wrapper may have changed it (DP noise): that is the global model now
            record = self.last_record
            if record is None or record.round != rnd:  # the wrapper did not let this strategy aggregate
                record = self.last_record = self._skipped(rnd, replies, driver)
            for key, attr in (("dp_noise_multiplier", "noise_multiplier"), ("dp_clipping_norm", "clipping_norm")):
                value = getattr(via, attr, None) if via is not None else None
                if isinstance(value, (int, float)):
                    record.agg_metrics[key] = float(value)
            if train_metrics is not None:
                if self.log_rounds:
                    flwr_log.info("\t└──> Aggregated MetricRecord: %s", train_metrics)
                result.train_metrics_clientapp[rnd] = train_metrics
            msgs = list(driver.configure_evaluate(rnd, arrays, evaluate_config, grid))
            if msgs:
                ev = driver.aggregate_evaluate(rnd, grid.send_and_receive(msgs, timeout=timeout))
                if ev is not None:
                    if self.log_rounds:
                        flwr_log.info("\t└──> Aggregated MetricRecord: %s", ev)
                    result.evaluate_metrics_clientapp[rnd] = ev
            if evaluate_fn is not None:
                res = evaluate_fn(rnd, arrays)
                if self.log_rounds:
                    flwr_log.info("Global evaluation")
                    flwr_log.info("\t└──> MetricRecord: %s", res)
                if res is not None:
                    result.evaluate_metrics_serverapp[rnd] = res
                    loss, acc = res.get("loss"), res.get("accuracy")
                    record.test_loss = float(loss) if isinstance(loss, (int, float)) else None
                    record.test_accuracy = float(acc) if isinstance(acc, (int, float)) else None
            record.seconds = time.perf_counter() - t0
            stop = [cb.after_round(record, self) for cb in callbacks]
            watch.observe(rnd, len(record.asked), len(record.replied), record.failed, record.rejected)
            if any(stop):
                log.info("round %d: a callback stopped training", rnd)
                break
        else:
            if self.max_failed_rounds:  # this strategy owns the rule (fedagg's own loop: its RunGuard does)
                watch.finish(num_rounds)
        for cb in callbacks:
            cb.on_train_end(self, result)
        if self.log_rounds:
            flwr_log.info("")
            flwr_log.info("Strategy execution finished in %.2fs", time.time() - t_start)
        return result

    def _skipped(self, rnd: int, replies: Sequence[Message], driver: Strategy) -> RoundRecord:
        """The record of a round a wrapper aggregated without this strategy (Flower's DP
        wrappers skip a round in which any client reported an error)."""
        by_node = {r.metadata.src_node_id: r for r in replies}
        failed: dict[int, str] = {}
        rejected: dict[int, str] = {}
        for node, (cid, _) in self._sent.items():
            r = by_node.get(node)
            why = _failure(r)
            if why is not None:
                failed[cid] = why
            else:
                rejected[cid] = f"{type(driver).__name__} skipped the aggregation of this round"
        log.warning("round %d: %s did not aggregate this round; the global model is unchanged",
                    rnd, type(driver).__name__)
        return RoundRecord(rnd, sorted(cid for cid, _ in self._sent.values()), [], failed, rejected, None, {})


def train_loss_of(updates: Sequence[ClientUpdate]) -> float | None:
    """The updates' training loss weighted by their example counts (None unless every one has one)."""
    n = np.array([u.num_examples for u in updates], dtype=float)
    losses = [u.train_loss for u in updates]
    if updates and all(x is not None for x in losses):
        return float(np.dot(n, np.array(losses, dtype=float)) / n.sum())
    return None


def _failure(reply: Message | None) -> str | None:
    """Why an asked client did not deliver an update (None: it replied)."""
    if reply is None:
        return "no reply before the round timeout"
    if reply.has_error():
        return _error_line(reply.error.reason)
    return None


def _echoed_id(reply: Message) -> int | None:
    """The ``partition-id`` a reply's metrics carry, if any."""
    recs = reply.content.metric_records
    m = recs.get("metrics") or (next(iter(recs.values())) if len(recs) == 1 else None)
    pid = None if m is None else m.get("partition-id")
    if isinstance(pid, float) and pid.is_integer():
        pid = int(pid)
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None
