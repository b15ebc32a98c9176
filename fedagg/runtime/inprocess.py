"""An in-process Flower Grid: calls the ClientApp synchronously, one
persistent Context per simulated node. Same ServerApp/ClientApp as every
other runtime; no Ray, no polling."""
from __future__ import annotations

import traceback
import uuid
from typing import Any, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

ERROR_CODE_CLIENT_EXCEPTION = 1


def set_task_identity(run_id: int = 1, node_id: int = 0, task_id: int = 1) -> None:
    """Message() reads a process-global identity that Flower's runtimes set
    (FLOWER_NOTES §2.4); outside one, set it ourselves."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id


def reply_from_node(reply: Message, msg: Message) -> Message:
    """Stamp the sender on a reply, as a SuperLink does: the node ``msg`` went to."""
    reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
    return reply


def call_client(client_app: Any, msg: Message, ctx: Context) -> Message:
    """Run the ClientApp on one message; an exception becomes an error reply,
    as in Flower's real runtimes. The reply comes from ``msg``'s node."""
    try:
        reply = client_app(msg, ctx)
    except Exception as e:  # noqa: BLE001 - any client failure is a failed reply
        reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        reply = Message(Error(code=ERROR_CODE_CLIENT_EXCEPTION, reason=reason), reply_to=msg)
    return reply_from_node(reply, msg)


class SimulatedGrid(Grid):
    """Grid plumbing shared by fedagg's simulation grids: a fixed list of
    simulated node ids; subclasses deliver the messages."""

    node_ids: list[int]
    _run: Any = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)


class InProcessGrid(SimulatedGrid):
    def __init__(self, client_app: Any, num_nodes: int, node_config: dict[str, Any] | None = None,
                 vector: Any = None) -> None:
        self.client_app = client_app
        self.vector = vector  # VectorSettings: train cohorts vectorised (runtime.vectorize)
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            nid: Context(run_id=1, node_id=nid,
                         node_config={"partition-id": i, "num-partitions": num_nodes, **(node_config or {})},
                         state=RecordDict(), run_config={})
            for i, nid in enumerate(self.node_ids)
        }
        self._replies: dict[str, Message] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
        rest = messages
        if self.vector is not None and self.vector.enabled:
            from .vectorised import plan_chunks, run_chunk

            chunks, rest = plan_chunks(messages, lambda nid: self.contexts[nid].node_config, self.vector.chunk)
            for chunk in chunks:
                replies = run_chunk(self.client_app, [(m, self.contexts[m.metadata.dst_node_id]) for m in chunk])
                for m, r in zip(chunk, replies):
                    self._replies[m.metadata.message_id] = r
        for msg in rest:
            self._replies[msg.metadata.message_id] = call_client(self.client_app, msg,
                                                                 self.contexts[msg.metadata.dst_node_id])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_inprocess(server_app: Any, exp: Any, result: dict[str, Any]) -> None:
    from ..flower.client_app import app as client_app

    from .vectorised import check_supported, settings_from

    vector = settings_from(exp.cfg["runtime"])
    vectorise = vector.enabled and check_supported(exp, vector) is None
    set_task_identity()
    grid = InProcessGrid(client_app, exp.cfg["num_clients"], vector=vector if vectorise else None)
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    server_app(grid, ctx)
