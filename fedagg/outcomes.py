"""How a run ends: completed, failed (every asked client failed for
``server.max_failed_rounds`` rounds in a row) or interrupted (SIGINT /
SIGTERM: the current round finishes first; a second signal aborts).

The server loop asks ``FailureWatch.observe`` after each round and
``Interrupts.requested`` before the next one; the CLI turns the outcome into
``status.json`` and the exit status (0 completed, 1 failed, 130 interrupted).

A sweep whose jobs run in other processes (``hydra/launcher=joblib``) is
stopped through a file named by ``$FEDAGG_SWEEP_STOP``: the first signal to
any of its processes writes the signal's name there; every running job then
finishes its round and ends ``interrupted``, and jobs not yet started are
skipped (:func:`sweep_stop`).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

log = logging.getLogger("fedagg")

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class RunFailed(RuntimeError):
    """The run cannot make progress: every asked client failed, round after round."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM: the run stopped after finishing round ``last_round``."""

    def __init__(self, last_round: int, signame: str) -> None:
        super().__init__(f"{signame} after round {last_round}")
        self.last_round = last_round
        self.signame = signame


class FailureWatch:
    """Stops a run whose asked clients all failed in ``max_failed_rounds``
    consecutive rounds (0 = never). A round where nobody was asked neither
    counts nor resets: it is not a failure of the clients."""

    def __init__(self, max_failed_rounds: int, option: str = "server.max_failed_rounds") -> None:
        self.max_failed_rounds = int(max_failed_rounds)
        self.option = option  # the setting the error names
        self.streak = 0
        self.first_error = ""

    def observe(self, rnd: int, asked: int, replied: int, failed: Mapping[Any, str]) -> None:
        if asked == 0:
            return
        if replied > 0 or not failed or len(failed) < asked:
            self.streak, self.first_error = 0, ""
            return
        self.streak += 1
        if not self.first_error:
            self.first_error = next(iter(failed.values()))
        if self.max_failed_rounds and self.streak >= self.max_failed_rounds:
            raise RunFailed(
                f"every asked client failed in {self.streak} consecutive rounds (up to round {rnd}; "
                f"{self.option}={self.max_failed_rounds}); first error: {self.first_error}"
            )


_ACTIVE: list[Interrupts] = []
SWEEP_STOP_ENV = "FEDAGG_SWEEP_STOP"


def sweep_stop() -> str | None:
    """The signal that stopped this sweep in any of its processes, or None."""
    path = os.environ.get(SWEEP_STOP_ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or "SIGINT"
    except OSError:
        return None


def request_sweep_stop(name: str) -> None:
    """Tell every process of this sweep to stop after its current round."""
    path = os.environ.get(SWEEP_STOP_ENV)
    if path:
        with open(path, "w") as f:
            f.write(name)


def stop_requested() -> str | None:
    """The signal name when the innermost active ``Interrupts`` got one, or the sweep was stopped."""
    return (_ACTIVE[-1].requested if _ACTIVE else None) or sweep_stop()


class Interrupts:
    """Context manager: the first SIGINT/SIGTERM sets ``requested`` (the loop
    finishes the current round, then stops); a second one raises
    KeyboardInterrupt at once. Handlers are restored on exit. Only the main
    thread can install handlers; elsewhere this is a no-op."""

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self.requested: str | None = None
        self._on_first = on_first
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {name}: aborting")
        self.requested = name
        if self._on_first is not None:
            self._on_first(name)
        else:
            print(f"\n{name}: finishing the current round, then stopping (press Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


# rules whose step is scaled by (participants / num_clients) until they have seen each client
SCALED_BY_PARTICIPATION = ("fedau", "fedau_k50", "avg_all")


def early_round_warning(aggregator: str, participation: str, server_lr: float | None) -> str | None:
    """A hint when a rule's early rounds nearly vanish at its server lr: FedAU
    (and average-all) divide the sum of the round's updates by num_clients, so
    with partial participation the first steps are ~participants/N of FedAvg's."""
    if aggregator not in SCALED_BY_PARTICIPATION or participation == "full":
        return None
    if server_lr is not None and server_lr > 1.0:
        return None
    return (f"aggregator={aggregator} with participation={participation}: each round's update is divided by "
            f"num_clients, so early rounds move ~participants/N as far as FedAvg's at server lr "
            f"{1.0 if server_lr is None else server_lr}; the paper's tuned learning rates are in "
            f"fedagg/conf/experiment/claim_fedau.yaml (vars.claim_lr, vars.claim_server_lr; +experiment=claim_fedau)")


class NobodyAsked:
    """Warns once per run, at the first round that asks no client at all
    (metrics.csv's ``clients_asked`` shows every such round)."""

    def __init__(self) -> None:
        self._warned = False

    def observe(self, rnd: int, asked: int) -> str | None:
        if asked > 0 or self._warned:
            return None
        self._warned = True
        return (f"round {rnd} asked no client (none available under this participation/heterogeneity); "
                "the model stays unchanged until clients are available (said once per run; metrics.csv's "
                "clients_asked shows every such round)")


class RunGuard:
    """Asked after every round: warns when nobody was asked, stops the run as
    failed after ``max_failed_rounds`` all-failed rounds, and as interrupted
    once a signal came. ``outcome`` holds the exception the caller raises once
    the runtime has shut down (a ServerApp may run in a thread whose
    exceptions the runtime would swallow)."""

    def __init__(self, max_failed_rounds: int) -> None:
        self.watch = FailureWatch(max_failed_rounds)
        self.nobody = NobodyAsked()
        self.outcome: RunFailed | RunInterrupted | None = None

    def after_round(self, rnd: int, asked: int, replied: int, failed: Mapping[Any, str]) -> bool:
        """True: stop after this round (``outcome`` says why)."""
        msg = self.nobody.observe(rnd, asked)
        if msg:
            log.warning(msg)
        try:
            self.watch.observe(rnd, asked, replied, failed)
        except RunFailed as e:
            self.outcome = e
            return True
        sig = stop_requested()
        if sig:
            self.outcome = RunInterrupted(rnd, sig)
            return True
        return False
