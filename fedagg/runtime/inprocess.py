"""An in-process Flower Grid: calls the ClientApp synchronously, one
persistent Context per simulated node. Same ServerApp/ClientApp as every
other runtime; no Ray, no polling."""
from __future__ import annotations

import uuid
from typing import Any, Iterable, Iterator, Mapping

from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ..flower.client_state import CLIENT_STATE
from ..flower.protocol import NUM_PARTITIONS, PARTITION_ID
from .calls import call_client

NODE_ID_BASE = 1000  # simulated node i (partition-id i) has id 1000 + i


def set_task_identity(run_id: int = 1, node_id: int = 0, task_id: int = 1) -> None:
    """Message() reads a process-global identity that Flower's runtimes set;
    outside one, set it ourselves."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id


class OffsetMap(Mapping[int, int]):
    """The map ``k -> k + offset`` for ``k`` in ``range(start, start + size)``,
    in O(1) memory: a million simulated clients need no dict."""

    def __init__(self, start: int, size: int, offset: int) -> None:
        self.start, self.size, self.offset = int(start), int(size), int(offset)

    def __getitem__(self, key: int) -> int:
        if not (isinstance(key, int) and self.start <= key < self.start + self.size):
            raise KeyError(key)
        return key + self.offset

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.start <= key < self.start + self.size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.size))

    def __len__(self) -> int:
        return self.size


class SimulatedGrid(Grid):
    """Grid plumbing shared by fedagg's simulation grids: simulated nodes
    ``NODE_ID_BASE + i`` serving client (partition) ``i``; subclasses deliver
    the messages. The node <-> client map is known by construction
    (:meth:`client_node_map`), so no query round is needed, and nothing per
    node exists until the node is sent a message. With ``vector`` settings a
    round's TRAIN messages go to the ClientApp in chunks (one message, one
    reply each; :mod:`fedagg.runtime.vectorised`)."""

    num_nodes: int
    _run: Any = None
    # True: send_and_receive hands back a chunk's reply as it is (one for the chunk's clients), not the
    # per-client replies it stands for; fedagg's strategy sets it (FedaggStrategy.start), as it reads them
    chunk_replies: bool = False
    _replies: dict[str, Message]  # message id -> its reply, until pulled
    _chunks: dict[str, tuple[list[Message], Message]]  # member message id -> (chunk, its reply)
    # the virtual clients' states (rules with client state only; fedagg.runtime.state_store): each TRAIN
    # message carries its client's state to whichever worker trains it, each reply brings the new one back
    client_state: Any = None

    @property
    def node_ids(self) -> range:
        return range(NODE_ID_BASE, NODE_ID_BASE + self.num_nodes)

    def node_config(self, node_id: int) -> dict[str, Any]:
        if node_id not in self.node_ids:
            raise ValueError(f"message to unknown node {node_id}")
        return {PARTITION_ID: node_id - NODE_ID_BASE, NUM_PARTITIONS: self.num_nodes,
                **(getattr(self, "extra_node_config", None) or {})}

    def client_node_map(self) -> tuple[Mapping[int, int], Mapping[int, int]]:
        """(client id -> node id, node id -> client id), without asking the nodes."""
        return (OffsetMap(0, self.num_nodes, NODE_ID_BASE),
                OffsetMap(NODE_ID_BASE, self.num_nodes, -NODE_ID_BASE))

    def attach_state(self, messages: Iterable[Message]) -> None:
        """Put each TRAIN message's client state in it (an empty record: never asked before)."""
        store = self.client_state
        if store is None:
            return
        from ..flower.codec import params_to_record

        for msg in messages:
            if msg.metadata.message_type != MessageType.TRAIN:
                continue
            state = store.get(int(self.node_config(msg.metadata.dst_node_id)[PARTITION_ID]))
            msg.content[CLIENT_STATE] = ArrayRecord() if state is None else params_to_record(state)

    def take_state(self, reply: Message, sent: Iterable[Message]) -> None:
        """Store the new states a reply to ``sent`` (one message, or a chunk's) brings back, and
        take them out of it."""
        store = self.client_state
        if store is None or reply.has_error() or CLIENT_STATE not in reply.content.array_records:
            return
        from ..flower import chunk as wire
        from ..flower.codec import record_to_params

        pids = [int(self.node_config(m.metadata.dst_node_id)[PARTITION_ID]) for m in sent]
        rec = reply.content.array_records[CLIENT_STATE]
        del reply.content[CLIENT_STATE]
        states = record_to_params(rec)
        if not wire.is_chunk_reply(reply):
            store.put(pids[0], states)
            return
        rows = record_to_params(reply.content.array_records[wire.METRICS])[PARTITION_ID]
        for j, pid in enumerate(rows.tolist()):
            if pid in pids:
                store.put(int(pid), {k: v[j] for k, v in states.items()})

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.node_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Standard per-client replies (a chunk's reply is split)."""
        from .vectorised import split_reply

        out = []
        for mid in message_ids:
            if mid in self._chunks:
                chunk, reply = self._chunks[mid]
                for m, r in zip(chunk, split_reply(reply, chunk)):
                    self._chunks.pop(m.metadata.message_id, None)
                    self._replies[m.metadata.message_id] = r
            if mid in self._replies:
                out.append(self._replies.pop(mid))
        return out


class InProcessGrid(SimulatedGrid):
    def __init__(self, client_app: Any, num_nodes: int, node_config: dict[str, Any] | None = None,
                 vector: Any = None) -> None:
        self.client_app = client_app
        self.vector = vector  # VectorSettings: a round's clients go in chunks (runtime.vectorize)
        self.num_nodes = int(num_nodes)
        self.extra_node_config = dict(node_config or {})
        self._contexts: dict[int, Context] = {}  # built when a node is first sent a message
        self._replies: dict[str, Message] = {}
        self._chunks: dict[str, tuple[list[Message], Message]] = {}  # member message id -> (chunk, its reply)
        self._worker: Context | None = None  # the Context chunk calls run in

    def context(self, node_id: int) -> Context:
        """The node's persistent Context (created on its first message)."""
        ctx = self._contexts.get(node_id)
        if ctx is None:
            ctx = self._contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=self.node_config(node_id),
                                                    state=RecordDict(), run_config={})
        return ctx

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
        self.attach_state(messages)
        rest = messages
        if self.vector is not None and self.vector.enabled:
            from .vectorised import chunk_message, plan_chunks

            chunks, rest = plan_chunks(messages, self.node_config, self.vector.chunk, self.vector.stacked)
            if self._worker is None:
                self._worker = Context(run_id=1, node_id=0, node_config=dict(self.extra_node_config),
                                       state=RecordDict(), run_config={})
            for chunk in chunks:
                reply = call_client(self.client_app, chunk_message(chunk, self.node_config, self.vector.stacked),
                                    self._worker)
                self.take_state(reply, chunk)
                for m in chunk:
                    self._chunks[m.metadata.message_id] = (chunk, reply)
        for msg in rest:
            reply = call_client(self.client_app, msg, self.context(msg.metadata.dst_node_id))
            self.take_state(reply, [msg])
            self._replies[msg.metadata.message_id] = reply
        return ids

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        if not self.chunk_replies:
            return self.pull_messages(ids)
        out = list({id(r): r for _, r in (self._chunks[m] for m in ids if m in self._chunks)}.values())
        for m in ids:
            self._chunks.pop(m, None)
        return out + [self._replies.pop(m) for m in ids if m in self._replies]


def run_inprocess(server_app: Any, exp: Any, result: dict[str, Any]) -> None:
    from ..flower.client_app import for_dp_mode
    from .vectorised import chunk_settings

    vector = chunk_settings(exp)
    set_task_identity()
    grid = InProcessGrid(for_dp_mode(exp.cfg.dp.mode), exp.cfg.num_clients, vector=vector)
    grid.client_state = getattr(exp, "client_state", None)
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    server_app(grid, ctx)
