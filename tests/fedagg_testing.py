"""Helpers shared by the end-to-end tests (imported by name, unlike conftest)."""
from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from fedagg.config import CONF_DIR  # noqa: E402  (registers the typed schema)

# small, fast settings shared by the end-to-end tests (sklearn digits, MLP)
SMALL = ["dataset=digits", "num_clients=6", "rounds=3", "model=mlp", "train.lr=0.1", "train.momentum=0.9"]


def compose(*overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return hcompose("config", overrides=list(overrides))


def fedagg_cmd() -> list[str]:
    return [sys.executable, "-m", "fedagg.cli"]


@contextmanager
def silent_peer() -> Iterator[str]:
    """``127.0.0.1:<port>`` of a peer that never answers: a TCP connect to it
    hangs until the caller's timeout, as it would to a black-holed host, but
    nothing leaves this machine. A listener with a backlog of 0 whose one queue
    slot is taken by a connection nobody accepts: the kernel drops every further
    SYN, so the next connect neither succeeds nor is refused."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        host, port = listener.getsockname()
        filler.connect((host, port))  # fills the accept queue; never accepted
        yield f"{host}:{port}"
    finally:
        filler.close()
        listener.close()


def run_in_node_contexts_and_in_the_store(rule: str, exp, rounds: int, clients: int = 6) -> None:
    """``strategy_for(rule)`` driving fedagg's ClientApp twice: on a grid that keeps no store (each
    node's Context.state holds the client's state, as on a SuperNode) and with the driver's store
    (no Context holds it). Every client replies in every round, and the two final models are bitwise equal."""
    from fedagg.flower import client_app, strategy_for
    from fedagg.flower.client_state import CLIENT_STATE
    from fedagg.flower.codec import params_to_record
    from fedagg.runtime.inprocess import InProcessGrid, set_task_identity
    from fedagg.runtime.state_store import ClientStateStore

    init = params_to_record(exp.init_params(0))
    out = []
    for store in (None, ClientStateStore(2**30, None)):
        set_task_identity()
        grid = InProcessGrid(client_app.app, clients)
        grid.client_state = store
        s = strategy_for(rule, num_clients=clients, num_classes=exp.fd.num_classes, instruction=exp.instruction)
        res = s.start(grid=grid, initial_arrays=init, num_rounds=rounds)
        assert s.last_record.replied == list(range(clients)) and not s.last_record.rejected
        kept = [CLIENT_STATE in grid.context(1000 + i).state.array_records for i in range(clients)]
        assert kept == [store is None] * clients
        out.append(res.arrays)
    for k in out[0]:
        assert out[0][k].numpy().tobytes() == out[1][k].numpy().tobytes(), k
