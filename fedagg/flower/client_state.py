"""Per-client state on the wire: one mechanism for deployment and simulation.

A client's state (named arrays; SCAFFOLD's control variate c_i) lives where Flower keeps a
node's memory, the node's ``Context.state``, under :data:`CLIENT_STATE` (an ArrayRecord): on a
real SuperNode the ClientApp reads it there and writes it back after training, and it never
leaves the node.

In simulation one process serves many virtual clients, so the driver keeps their states instead
(:mod:`fedagg.runtime.state_store`, bounded, spilled to a file, checkpointed): fedagg's grids
put a client's state into its TRAIN message under the same key -- an empty ArrayRecord for a
client asked for the first time (it starts from the rule's initial state, zeros) -- and take the
new state out of the reply (a chunk's reply: stacked, one row per client that replied) before
anyone else sees it. The ClientApp code is the same: the state comes from the message when the
message carries one, else from ``Context.state``, and goes back the same way.

Two more records travel for rules with client-side terms (:mod:`fedagg.task.correction`):
:data:`RULE_SERVER` in a TRAIN message (the server's arrays: ``c.<name>``, ``g.<name>``, the same
record for every client of a round, so a chunk carries it once) and :data:`RULE_REPLY` in the
reply (``dc.<name>``, ``lr_steps``), which the rule reads as ``ClientUpdate.extras``.
"""
from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message

from ..aggregators.base import Params
from .codec import params_to_record, record_to_params

CLIENT_STATE = "fedagg.client-state"
RULE_SERVER = "fedagg.rule-server"
RULE_REPLY = "fedagg.rule-reply"


def carried_state(msg: Message) -> ArrayRecord | None:
    """The state a simulation grid put in ``msg`` (None: the node keeps its own)."""
    recs = msg.content.array_records
    return recs[CLIENT_STATE] if CLIENT_STATE in recs else None


def context_state(context: Context) -> Params | None:
    """The state this node keeps in its Context (deployment), or None before its first round."""
    recs = context.state.array_records
    return record_to_params(recs[CLIENT_STATE]) if CLIENT_STATE in recs else None


def keep_in_context(context: Context, state: Params) -> None:
    context.state[CLIENT_STATE] = params_to_record(state)


def rule_extras(msg: Message) -> Params | None:
    """The reply's :data:`RULE_REPLY` arrays (None: it sent none)."""
    recs = msg.content.array_records
    return record_to_params(recs[RULE_REPLY]) if RULE_REPLY in recs else None
