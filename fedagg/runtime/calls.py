"""Calling a ClientApp the way Flower's runtimes do (shared by every grid
and the vectorised cohort path)."""
from __future__ import annotations

import traceback
from typing import Any

from flwr.app import Context, Error, Message

ERROR_CODE_CLIENT_EXCEPTION = 1


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
