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
