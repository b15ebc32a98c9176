"""How a run ends: completed, failed (no update was accepted -- every asked
client failed or was rejected -- for ``server.max_failed_rounds`` rounds in a
row, or in the whole run) or interrupted (SIGINT / SIGTERM: the current round
finishes first; during start-up, before round 1, the run stops at once; a
second signal aborts).

The server loop asks ``FailureWatch.observe`` after each round and
``Interrupts.requested`` before the next one; :class:`RunStatus` writes the
outcome to ``status.json`` (the CLI and the Python API alike), and the CLI
turns it into the exit status (0 completed, 1 failed, 130 interrupted).

A sweep whose jobs run in other processes (``hydra/launcher=joblib``) is
stopped through a file named by ``$FEDAGG_SWEEP_STOP``: the first signal to
any of its processes writes the signal's name there; every running job then
finishes its round and ends ``interrupted``, and jobs not yet started are
skipped (:func:`sweep_stop`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("fedagg")

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class RunFailed(RuntimeError):
    """The run cannot make progress: no update was accepted (every asked client failed or was rejected)."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM: the run stopped after finishing round ``last_round``."""

    def __init__(self, last_round: int, signame: str) -> None:
        super().__init__(f"{signame} after round {last_round}")
        self.last_round = last_round
        self.signame = signame


def first_reason(failed: Mapping[Any, str], rejected: Mapping[Any, str]) -> str:
    """The lowest client id's reason in a round where no update was accepted."""
    why = {**{c: f"client {c} failed: {r}" for c, r in failed.items()},
           **{c: f"client {c}'s update rejected: {r}" for c, r in rejected.items()}}
    return why[min(why)] if why else "no reply"


class FailureWatch:
    """The one rule for a run that makes no progress: a round where clients were
    asked but no update was accepted (each failed or was rejected) counts; after
    ``max_failed_rounds`` such rounds in a row (0 = never) the run has failed, and
    a run that ends without accepting a single update has failed too
    (:meth:`finish`). A round where nobody was asked neither counts nor resets:
    it is not a failure of the clients. ``accepted_before``: a resumed run's
    earlier rounds accepted updates."""

    def __init__(self, max_failed_rounds: int, accepted_before: bool = False,
                 option: str = "server.max_failed_rounds") -> None:
        self.max_failed_rounds = int(max_failed_rounds)
        self.option = option  # the setting the error names
        self.streak = 0
        self.first_error = ""
        self.accepted_any = accepted_before
        self.asked_any = False

    def observe(self, rnd: int, asked: int, accepted: int, failed: Mapping[Any, str],
                rejected: Mapping[Any, str] | None = None) -> None:
        if asked == 0:
            return
        self.asked_any = True
        if accepted > 0:
            self.streak, self.first_error, self.accepted_any = 0, "", True
            return
        self.streak += 1
        if not self.first_error:
            self.first_error = first_reason(failed, rejected or {})
        if self.max_failed_rounds and self.streak >= self.max_failed_rounds:
            raise RunFailed(
                f"no update was accepted (every asked client failed or was rejected) in {self.streak} consecutive "
                f"rounds (up to round {rnd}; {self.option}={self.max_failed_rounds}); "
                f"first: {self.first_error}"
            )

    def finish(self, last_round: int) -> None:
        """At the end of the rounds: a run that asked clients but never accepted an update has failed."""
        if self.asked_any and not self.accepted_any:
            raise RunFailed(f"no update was accepted in any round (up to round {last_round}): every asked client "
                            f"failed or was rejected; first: {self.first_error}")


class Interrupted(KeyboardInterrupt):
    """What fedagg's signal handlers raise. A subclass on purpose: CPython
    remembers a plain KeyboardInterrupt that leaves code run by ``exec(str)`` (as
    numpy/scipy do on import) as unhandled, and a ``python -m`` process then kills
    itself by SIGINT at exit (status -2) even after the exception was caught and
    ``sys.exit(130)`` was called; it checks for the exact type only."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def interrupt_with_subclass() -> None:
    """Outside a run's :class:`Interrupts` too (config checks, Hydra set-up), Ctrl-C
    raises :class:`Interrupted` instead of Python's plain KeyboardInterrupt. Where
    SIGINT is ignored (started in the background) it stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupted)


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


def rounds_begin() -> None:
    """The run's start-up is over (its first round starts now): from here a
    first signal lets the current round finish instead of stopping at once."""
    if _ACTIVE:
        _ACTIVE[-1].startup = False


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold signals while the block runs (Ray starting its daemons, driver and
    workers: a KeyboardInterrupt in the middle leaves Ray half built; the exit
    by SIGINT that CI once blamed on it came from exec'd source, see
    :class:`Interrupted`), then act on the first as it came (a second one acts at once): during start-up that stops the run
    at once, as before, only a few seconds later. Outside an active
    :class:`Interrupts` (or off the main thread) it does nothing."""
    if not _ACTIVE:
        yield
        return
    it = _ACTIVE[-1]
    it.holding += 1
    try:
        yield
    finally:
        it.holding -= 1
        held: list[int] = []
        if not it.holding:  # the outermost block acts on what it held
            held, it.held = it.held, []
    if held:
        it._handle(held[0], None)


class Interrupts:
    """Context manager: the first SIGINT/SIGTERM sets ``requested`` (the loop
    finishes the current round, then stops); a second one raises
    KeyboardInterrupt at once. With ``startup=True`` there is no round to
    finish until :func:`rounds_begin` is called: a signal before that (data
    loading, Ray starting) raises KeyboardInterrupt at once. Handlers are
    restored on exit. Only the main thread can install handlers; elsewhere
    this is a no-op."""

    def __init__(self, on_first: Callable[[str], None] | None = None, startup: bool = False) -> None:
        self.requested: str | None = None
        self.startup = startup
        self._on_first = on_first
        self._old: dict[int, Any] = {}
        self.holding = 0  # > 0 inside held_interrupts(): signals wait in ``held``
        self.held: list[int] = []

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.holding and not self.held:  # a second signal goes through at once
            self.held.append(signum)
            return
        name = signal.Signals(signum).name
        if self.startup:
            self.requested = name
            raise Interrupted(f"by {name} during start-up, before round 1")
        if self.requested is not None:
            raise Interrupted(f"by a second {name} in the middle of a round")
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
    failed when :class:`FailureWatch` says so, and as interrupted once a signal
    came. ``outcome`` holds the exception the caller raises once the runtime has
    shut down (a ServerApp may run in a thread whose exceptions the runtime
    would swallow)."""

    def __init__(self, max_failed_rounds: int, accepted_before: bool = False) -> None:
        self.watch = FailureWatch(max_failed_rounds, accepted_before)
        self.nobody = NobodyAsked()
        self.outcome: RunFailed | RunInterrupted | None = None

    def after_round(self, rnd: int, asked: int, accepted: int, failed: Mapping[Any, str],
                    rejected: Mapping[Any, str] | None = None) -> bool:
        """True: stop after this round (``outcome`` says why)."""
        msg = self.nobody.observe(rnd, asked)
        if msg:
            log.warning(msg)
        try:
            self.watch.observe(rnd, asked, accepted, failed, rejected)
        except RunFailed as e:
            self.outcome = e
            return True
        sig = stop_requested()
        if sig:
            self.outcome = RunInterrupted(rnd, sig)
            return True
        return False

    def at_end(self, last_round: int) -> None:
        """After the last round: ``outcome`` is RunFailed when no update was ever accepted."""
        if self.outcome is None:
            try:
                self.watch.finish(last_round)
            except RunFailed as e:
                self.outcome = e


class RunStatus:
    """``status.json`` of one run folder: ``running`` once the experiment is
    built, then ``completed`` (with the final accuracy), ``failed`` (with the
    error) or ``interrupted`` (with the last finished round). A resume in the
    run's own folder (``same_dir``) keeps the first attempt's ``started`` and
    writes nothing until it is running, so a refused or aborted resume leaves
    the status as it was."""

    NAME = "status.json"

    def __init__(self, out: Path, same_dir: bool = False) -> None:
        self.path = Path(out) / self.NAME
        self.same_dir = same_dir
        self.written = False
        self.status: dict[str, Any] = {"status": "running", "started": time.time()}
        if same_dir:
            before = read_status(Path(out))
            if isinstance(before.get("started"), (int, float)):
                self.status["started"] = before["started"]

    def _write(self, **fields: Any) -> None:
        self.status.update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.NAME}.tmp")
        tmp.write_text(json.dumps(self.status))
        os.replace(tmp, self.path)
        self.written = True

    def running(self) -> None:
        self._write(status="running")

    def completed(self, final_test_accuracy: Any) -> None:
        self._write(status="completed", finished=time.time(), final_test_accuracy=final_test_accuracy)

    def failed(self, error: str, tb: str | None = None) -> None:
        self._write(status="failed", error=error, finished=time.time(), **({"traceback": tb} if tb else {}))

    def interrupted(self, last_round: int | None) -> None:
        """Before this attempt ran (``written`` False) a resume in place leaves the earlier status."""
        if self.written or not self.same_dir:
            self._write(status="interrupted", finished=time.time(), last_round=last_round)


def read_status(out: Path) -> dict[str, Any]:
    """A run folder's status.json ({} when there is none or it cannot be read)."""
    try:
        st = json.loads((Path(out) / RunStatus.NAME).read_text())
    except (OSError, ValueError):
        return {}
    return st if isinstance(st, dict) else {}
