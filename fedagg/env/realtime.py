"""The asynchronous modes' bookkeeping on real time (deployment on a SuperLink).

In simulation the order of events is the virtual clock's (:mod:`fedagg.env.events`). In a deployment the
jobs run on real SuperNodes, so the order is the order in which their replies really arrive, and the times
are wall-clock seconds since the loop started (``time_s`` here, ``sim_time_s`` in metrics.csv). This class
holds the state of that loop; it does no I/O and takes every time as an argument, so its rules are tested
directly (tests/test_async_modes.py) and the loop (:class:`~fedagg.flower.realtime_loop.RealTimeLoop`) only
feeds it what it observes:

- :meth:`RealTimeSchedule.pick` chooses the clients to dispatch: up to ``concurrency`` jobs in flight, among
  the *idle* clients -- connected, not in flight, not yet sent the current version (a client trains at most
  once per version, as in simulation: the same model and seed stream would give the same update twice) --
  drawn uniformly by the named stream ``rng(seed, "async-dispatch", k)``, k the run's dispatch count;
  :meth:`dispatch` records a job sent the current version at time t;
- :meth:`arrive` records a job's reply (or its failure: a timed-out job, see :meth:`expired`, arrives as
  failed and its client is idle again) in the order the caller observed them; the job joins the buffer;
- :meth:`belongs` says whether an arrival goes into the coming update, :meth:`due` whether a server update is due: ``fedasync`` on every arrival, ``fedbuff`` when the
  buffer holds ``buffer_size`` arrivals, ``fedfix`` when t >= (v + 1) * ``window_s`` (real seconds), with
  whatever arrived (a window without arrivals is an update that leaves the model unchanged);
- :meth:`take` makes the update: version v -> v + 1 applying the buffer in arrival order, as a
  :class:`~fedagg.env.events.Step` (staleness of a job = server updates since its model was sent).

Failed jobs count as arrivals (as in simulation, where the schedule does not know a job's outcome), so a
fedbuff buffer or a fedasync update can hold a failure; the update applies the rest.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..seeding import rng
from .clock import EPS
from .events import Job, Step, check_sizes


@dataclass(frozen=True)
class Pending:
    """A job in flight: sent model ``version`` at ``dispatch_s``."""

    seq: int
    client: int
    version: int
    dispatch_s: float

    def log(self) -> dict[str, Any]:
        return asdict(self)


class RealTimeSchedule:
    """Version, jobs in flight and the buffer of one real-time asynchronous run."""

    def __init__(self, mode: str, num_clients: int, seed: int, concurrency: int, buffer_size: int = 1,
                 window_s: float | None = None) -> None:
        check_sizes(mode, num_clients, concurrency, buffer_size, window_s)
        self.mode, self.num_clients, self.seed = mode, int(num_clients), int(seed)
        self.concurrency, self.buffer_size, self.window_s = int(concurrency), int(buffer_size), window_s
        self.version = 0
        self.dispatches = 0
        self.in_flight: dict[int, Pending] = {}  # seq -> job
        self.buffer: list[Job] = []  # arrived, not applied yet, in arrival order
        self.sent: set[int] = set()  # clients sent the current version
        self.dispatched: list[Pending] = []  # sent since the last update

    # -- dispatch ---------------------------------------------------------------------
    def idle(self, connected: Iterable[int]) -> list[int]:
        """The ``connected`` clients that may be sent the current version, sorted."""
        busy = {p.client for p in self.in_flight.values()} | self.sent
        return sorted(set(connected) - busy)

    def pick(self, connected: Iterable[int]) -> list[int]:
        """The clients to dispatch now (at most the free slots), each drawn uniformly among the idle ones."""
        idle = self.idle(connected)
        out: list[int] = []
        k = self.dispatches
        while idle and len(self.in_flight) + len(out) < self.concurrency:
            c = idle.pop(int(rng(self.seed, "async-dispatch", k).integers(len(idle))))
            out.append(c)
            k += 1
        return out

    def dispatch(self, client: int, now: float) -> Pending:
        """``client`` was sent the current version at ``now``."""
        job = Pending(self.dispatches, int(client), self.version, float(now))
        self.dispatches += 1
        self.in_flight[job.seq] = job
        self.sent.add(job.client)
        self.dispatched.append(job)
        return job

    # -- arrivals ---------------------------------------------------------------------
    def expired(self, now: float, timeout: float | None) -> list[int]:
        """The jobs in flight for ``timeout`` seconds or more at ``now`` (none without a timeout)."""
        if timeout is None:
            return []
        return [seq for seq, p in self.in_flight.items() if now - p.dispatch_s >= timeout]

    def arrive(self, seq: int, now: float, steps: int = 0) -> Job:
        """Job ``seq`` arrived at ``now`` (a reply, or its failure); it joins the buffer."""
        p = self.in_flight.pop(seq)
        job = Job(p.seq, p.client, p.version, p.dispatch_s, max(float(now), p.dispatch_s), int(steps))
        self.buffer.append(job)
        return job

    # -- server updates -----------------------------------------------------------------
    def boundary(self) -> float | None:
        """fedfix: the time of the next update (None in the other modes)."""
        if self.mode != "fedfix":
            return None
        assert self.window_s is not None
        return (self.version + 1) * self.window_s

    def belongs(self, t: float) -> bool:
        """Whether an arrival observed at ``t`` goes into the coming update (else it waits for the next):
        fedfix, an arrival up to the window's end (on the boundary: the window it closes); the other modes,
        while the update is not due yet."""
        b = self.boundary()
        return t <= b + EPS if b is not None else not self.due(t)

    def due(self, now: float) -> bool:
        """Whether the next server update is due at ``now``."""
        if self.mode == "fedasync":
            return len(self.buffer) >= 1
        if self.mode == "fedbuff":
            return len(self.buffer) >= self.buffer_size
        b = self.boundary()
        assert b is not None
        return now >= b

    def take(self, now: float) -> tuple[Step, list[Pending]]:
        """The server update creating version v + 1 at ``now`` (the buffer, in arrival order) and the jobs
        dispatched since the previous update (in flight or arrived: a job's arrival time is known only then,
        so the Step's ``dispatched`` is empty)."""
        applied, self.buffer = self.buffer, []
        dispatched, self.dispatched = self.dispatched, []
        self.version += 1
        self.sent = set()
        return Step(self.version, float(now), (), applied), dispatched
