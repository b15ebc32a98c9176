"""The asynchronous modes' discrete-event schedule on the virtual clock (simulation truth).

``server.mode`` = ``fedasync`` | ``fedbuff`` | ``fedfix`` replaces the synchronous round with events on the
virtual clock (:class:`~fedagg.env.clock.Clock`). The server holds a model *version* v (the number of server
updates so far; v = 0 is the initial model) and keeps ``concurrency`` clients in flight:

- a *dispatch* at simulated time t sends client c the current model x_v; the job's duration is the clock's
  ``timing(v + 1, c).seconds`` (download + its planned local steps + upload, the plan of round v + 1), so it
  *arrives* at t + duration;
- events are taken in the order (arrival time, client id, dispatch number): deterministic, and independent of
  the training results and of the worker count;
- ``fedasync``: every arrival is one server update (v -> v + 1);
- ``fedbuff``: arrivals fill a buffer; the K-th (``server.buffer_size``) makes one server update of the buffer;
- ``fedfix``: the server updates at t = (v + 1) * Δ (``server.window_s``) with whatever arrived in
  ((v) Δ, (v + 1) Δ] (an arrival exactly on a boundary belongs to the window it closes); a window with no
  arrival is an update that leaves the model unchanged;
- after every event the server tops up to ``concurrency`` jobs in flight, at that event's time, with the then
  current version (so ``fedasync`` sends the new model to the replacement client; in ``fedbuff`` a client that
  arrives before the buffer is full is replaced by one that gets the same version).

Which client is dispatched: uniformly among the *idle* clients -- not in flight, not yet sent the current
version (a client trains at most once per version: the same model and the same seed stream would give the
same update twice), whose clock timing for round v + 1 is ``ok`` (a device that is off or a planned fault
from ``heterogeneity`` makes a client unavailable for that version) -- by the named stream
``rng(seed, "async-dispatch", k)`` with k the run's dispatch count (rejection sampling over all client ids
while at most half are busy, so a dispatch costs O(1) however many clients are registered). The participation pattern is not used
(``participation`` must be ``full``). Staleness of an applied job = (the version the update creates - 1) -
(the version it was sent) = server updates since its download; a fresh update has staleness 0.

:meth:`Schedule.advance` runs the events up to the next server update and returns a :class:`Step`: the jobs
dispatched on the way (all with the current version; the caller trains them when one of them is due, in one
batch with every other job waiting then, whatever their finish times) and the jobs the update applies, in the
order applied.
Everything is a pure function of the clock, the seed and the state (``state_dict``), which a checkpoint
holds, so a resumed run continues the same schedule.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ..seeding import rng
from .clock import EPS, ClientTime

MODES = ("sync", "fedasync", "fedbuff", "fedfix")
ASYNC_MODES = MODES[1:]


class Timing(Protocol):
    def timing(self, round: int, client: int) -> ClientTime: ...


@dataclass(frozen=True)
class Job:
    """One client job: dispatched at ``dispatch_s`` with model ``version``, arriving at ``arrival_s``."""

    seq: int  # the run's dispatch number (0-based)
    client: int
    version: int  # the model version it was sent (it trains with the plan of round version + 1)
    dispatch_s: float
    arrival_s: float
    steps: int  # its planned local steps

    @property
    def duration_s(self) -> float:
        return self.arrival_s - self.dispatch_s

    def key(self) -> tuple[float, int, int]:
        return (self.arrival_s, self.client, self.seq)

    def log(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """The events up to one server update: ``version`` is the version it creates, at ``time_s``."""

    version: int
    time_s: float
    dispatched: Sequence[Job]  # sent model ``version - 1`` since the previous update, in dispatch order
    applied: Sequence[Job]  # applied by this update, in the order applied

    def staleness(self, job: Job) -> int:
        return self.version - 1 - job.version


def check_sizes(mode: str, num_clients: int, concurrency: int, buffer_size: int, window_s: float | None) -> None:
    """The keys of an asynchronous mode (this schedule's and the real-time one's, :mod:`fedagg.env.realtime`)."""
    if mode not in ASYNC_MODES:
        raise ValueError(f"server.mode='{mode}' is not an asynchronous mode ({', '.join(ASYNC_MODES)})")
    if concurrency < 1 or concurrency > num_clients:
        raise ValueError(f"server.concurrency={concurrency} must be in 1..num_clients ({num_clients})")
    if mode == "fedbuff" and not 1 <= buffer_size <= num_clients:
        raise ValueError(f"server.buffer_size={buffer_size} must be in 1..num_clients ({num_clients})")
    if mode == "fedfix" and not (window_s is not None and window_s > 0):
        raise ValueError(f"server.window_s={window_s} must be > 0 seconds with server.mode=fedfix")


class Schedule:
    """The event loop's state: simulated time, the version, the jobs in flight and the buffer."""

    def __init__(self, mode: str, clock: Timing, num_clients: int, seed: int, concurrency: int,
                 buffer_size: int = 1, window_s: float | None = None) -> None:
        check_sizes(mode, num_clients, concurrency, buffer_size, window_s)
        self.mode, self.clock, self.num_clients, self.seed = mode, clock, int(num_clients), int(seed)
        self.concurrency, self.buffer_size, self.window_s = int(concurrency), int(buffer_size), window_s
        self.now = 0.0
        self.version = 0
        self.dispatches = 0
        self.in_flight: list[tuple[tuple[float, int, int], Job]] = []  # a heap by Job.key()
        self.buffer: list[Job] = []  # arrived, not applied yet (fedbuff, fedfix)
        self.sent: set[int] = set()  # clients sent the current version

    # -- dispatch ---------------------------------------------------------------------
    def _pick(self, busy: set[int], g: np.random.Generator) -> int | None:
        """A client drawn uniformly from those not in ``busy`` (None: every client is busy): rejection
        sampling while at most half are busy (O(1) per draw however many clients are registered), else a
        draw from the list of the rest."""
        free = self.num_clients - len(busy)
        if free <= 0:
            return None
        if 2 * len(busy) <= self.num_clients:
            while True:
                c = int(g.integers(self.num_clients))
                if c not in busy:
                    return c
        idle = [c for c in range(self.num_clients) if c not in busy]
        return idle[int(g.integers(len(idle)))]

    def _top_up(self, out: list[Job]) -> None:
        busy = {j.client for _, j in self.in_flight} | self.sent
        while len(self.in_flight) < self.concurrency:
            g = rng(self.seed, "async-dispatch", self.dispatches)
            while True:
                c = self._pick(busy, g)
                if c is None:
                    return  # nobody can be sent this version
                busy.add(c)
                self.sent.add(c)  # dispatched now, or unavailable for this version: not asked again
                t = self.clock.timing(self.version + 1, c)
                if t.outcome == "ok":
                    break
            job = Job(self.dispatches, c, self.version, self.now, self.now + t.seconds, t.steps)
            self.dispatches += 1
            heapq.heappush(self.in_flight, (job.key(), job))
            out.append(job)

    # -- events -----------------------------------------------------------------------
    def advance(self) -> Step:
        """Run the events up to the next server update; the caller then trains ``dispatched`` and applies."""
        dispatched: list[Job] = []
        self._top_up(dispatched)
        while True:
            nxt = self.in_flight[0][1] if self.in_flight else None
            if self.mode == "fedfix":
                assert self.window_s is not None
                boundary = (self.version + 1) * self.window_s
                if nxt is None or nxt.arrival_s > boundary + EPS:
                    return self._update(boundary, dispatched)
            elif nxt is None:
                raise RuntimeError(f"server.mode={self.mode}: no client can be dispatched at version "
                                   f"{self.version} (every device is off or faulty) and none is in flight")
            heapq.heappop(self.in_flight)
            self.now = max(self.now, nxt.arrival_s)
            self.buffer.append(nxt)
            if self.mode == "fedasync" or (self.mode == "fedbuff" and len(self.buffer) == self.buffer_size):
                return self._update(self.now, dispatched)
            self._top_up(dispatched)

    def _update(self, at: float, dispatched: list[Job]) -> Step:
        self.now = max(self.now, at)
        applied, self.buffer = self.buffer, []
        self.version += 1
        self.sent = set()
        return Step(self.version, self.now, dispatched, applied)

    # -- checkpoint ---------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job in flight or buffered (their updates are held by the caller)."""
        return [j for _, j in self.in_flight] + list(self.buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"now": self.now, "version": self.version, "dispatches": self.dispatches,
                "in_flight": [j.log() for _, j in sorted(self.in_flight)],
                "buffer": [j.log() for j in self.buffer], "sent": sorted(self.sent)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.now, self.version = float(state["now"]), int(state["version"])
        self.dispatches = int(state["dispatches"])
        self.in_flight = [(j.key(), j) for j in (Job(**d) for d in state["in_flight"])]
        heapq.heapify(self.in_flight)
        self.buffer = [Job(**d) for d in state["buffer"]]
        self.sent = {int(c) for c in state["sent"]}
