"""The asynchronous modes (``server.mode`` = fedasync | fedbuff | fedfix) in a deployment, on real time.

On a real SuperLink (:mod:`fedagg.deploy_app`) the jobs run on real SuperNodes, so there is no virtual clock:
the server keeps ``server.concurrency`` jobs in flight and applies the replies in the order they really
arrive. Each :meth:`RealTimeLoop.update` (one server update; ``rounds`` counts them):

1. sends one TRAIN message per job to idle nodes (:meth:`RealTimeSchedule.pick
   <fedagg.env.realtime.RealTimeSchedule.pick>`, the nodes ``grid.get_node_ids()`` lists) with
   ``grid.push_messages``, each with the current model and ``server-round`` = the version it helps create
   (the strategy's ``train_messages``, as in simulation);
2. polls ``grid.pull_messages`` for the replies of the jobs in flight (every ``poll_s`` seconds while none
   came) and checks each reply as it arrives (the strategy's ``collect``: the same validation as a round);
   replies pulled together are taken in the order their nodes created them. A job in flight for
   ``server.round_timeout`` seconds is failed (its late reply is never pulled) and its node is idle again;
3. when the mode's update is due (:meth:`RealTimeSchedule.due <fedagg.env.realtime.RealTimeSchedule.due>`:
   fedasync every arrival, fedbuff ``server.buffer_size`` arrivals, fedfix every ``server.window_s`` real
   seconds), :class:`~fedagg.flower.async_loop.AsyncUpdates` applies the buffer with
   :class:`~fedagg.aggregators.asynchronous.AsyncServerStep` -- the same staleness weights and updates as in
   simulation, with staleness = server updates since the job's model was sent and, for fedfix, the job's
   real duration.

Times (``sim_time_s`` in metrics.csv, the jobs' ``dispatch_s`` / ``arrival_s`` in rounds.jsonl) are real
seconds since the first dispatch. The order depends on the machines, so a run is not reproducible bitwise;
the simulation (:class:`~fedagg.flower.async_loop.AsyncLoop`) is. There is no checkpoint (the jobs in flight
could not be resumed): the config refuses ``checkpoint.every`` and ``resume`` here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from ..aggregators.asynchronous import AsyncServerStep
from ..aggregators.base import Params
from ..env.realtime import RealTimeSchedule
from .async_loop import AsyncUpdates, Trained
from .codec import params_to_record
from .protocol import STEPS
from .strategy import FedaggStrategy, RoundRecord

log = logging.getLogger("fedagg")

POLL_S = 0.2  # seconds between two pulls while no reply came


@dataclass
class Arrival:
    """A job's reply (or its failure) as observed, waiting to be recorded in arrival order."""

    seq: int
    reply: Message | None
    time_s: float
    failed: str | None = None


class RealTimeLoop(AsyncUpdates):
    clock_name = "real time"

    def __init__(self, strategy: FedaggStrategy, schedule: RealTimeSchedule, step: AsyncServerStep, *,
                 poll_s: float = POLL_S, stall_s: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(strategy, step, schedule.mode, schedule.concurrency)
        self.schedule, self.poll_s, self.stall_s, self.clock = schedule, float(poll_s), float(stall_s), clock
        self.t0: float | None = None
        self.msg_of: dict[str, int] = {}  # message id in flight -> job seq
        self.sent: dict[int, tuple[int, dict[int, tuple[int, Params]]]] = {}  # seq -> (server-round, its message)
        self.queue: list[Arrival] = []

    def now(self) -> float:
        assert self.t0 is not None
        return self.clock() - self.t0

    # -- dispatch ---------------------------------------------------------------------
    def _top_up(self, grid: Grid) -> None:
        sched, s = self.schedule, self.strategy
        if len(sched.in_flight) >= sched.concurrency or not sched.idle(s.node_of):
            return
        live = set(grid.get_node_ids())
        clients = sched.pick([c for c, n in s.node_of.items() if n in live])
        if not clients:
            return
        rnd = sched.version + 1
        msgs = s.train_messages(rnd, clients, params_to_record(s.params), ConfigRecord())
        sent = s.sent_jobs()
        now = self.now()
        ids = list(grid.push_messages(msgs))
        ids += [""] * (len(clients) - len(ids))  # a refused push returns fewer (or None) ids
        for cid, mid in zip(clients, ids):
            job = sched.dispatch(cid, now)
            node = s.node_of[cid]
            self.sent[job.seq] = (rnd, {node: sent[node]})
            if mid:
                self.msg_of[mid] = job.seq
            else:
                self.queue.append(Arrival(job.seq, None, now, "the SuperLink did not accept the message"))

    # -- arrivals ---------------------------------------------------------------------
    def _poll(self, grid: Grid, timeout: float | None) -> bool:
        """Pull what arrived (and fail the jobs past ``timeout``); whether anything was queued."""
        before = len(self.queue)
        now = self.now()
        for seq in self.schedule.expired(now, timeout):
            if seq in self.msg_of.values():
                self.msg_of = {m: q for m, q in self.msg_of.items() if q != seq}
                self.queue.append(Arrival(seq, None, now, f"no reply within server.round_timeout={timeout}s"))
        if self.msg_of:
            replies = list(grid.pull_messages(list(self.msg_of)))
            t = self.now()
            got = []
            for r in replies:
                mid = r.metadata.reply_to_message_id
                if mid in self.msg_of:
                    got.append((float(r.metadata.created_at or 0.0), self.msg_of.pop(mid), r))
            self.queue += [Arrival(seq, r, t) for _, seq, r in sorted(got, key=lambda x: x[:2])]
        return len(self.queue) > before

    def _arrive(self, a: Arrival) -> None:
        rnd, sent = self.sent.pop(a.seq)
        ((_, (cid, params)),) = sent.items()
        if a.reply is None:
            trained = Trained(None, params, a.failed)
        else:
            updates, _, failed, rejected = self.strategy.collect(rnd, [a.reply], sent)
            trained = Trained(updates[0] if updates else None, params, failed.get(cid), rejected.get(cid))
        steps = trained.update.metadata.get(STEPS, 0) if trained.update is not None else 0
        self.schedule.arrive(a.seq, a.time_s, int(steps) if isinstance(steps, (int, float)) else 0)
        self.trained[a.seq] = trained

    # -- one server update ---------------------------------------------------------------
    def update(self, grid: Grid, timeout: float | None) -> RoundRecord:
        if self.t0 is None:
            self.t0 = self.clock()
        sched = self.schedule
        stalled: float | None = None
        while True:
            while self.queue and sched.belongs(self.queue[0].time_s):
                self._arrive(self.queue.pop(0))
            now = self.now()
            if sched.due(now):
                st, dispatched = sched.take(now)
                record = self.apply(st, [p.log() for p in dispatched])
                self.strategy.connect(grid, wait=False)  # nodes that joined or came back since
                return record
            self._top_up(grid)
            if self._poll(grid, timeout):
                stalled = None
                continue
            if not sched.in_flight and not self.queue and sched.mode != "fedfix":
                stalled = now if stalled is None else stalled
                if now - stalled > self.stall_s:
                    raise RuntimeError(f"server.mode={sched.mode}: no node could be sent version {sched.version} "
                                       f"for {self.stall_s:.0f}s and no job is in flight")
                self.strategy.connect(grid, wait=False)
            b = sched.boundary()
            time.sleep(self.poll_s if b is None else max(0.0, min(self.poll_s, b - now)))

    def finish(self, grid: Grid) -> None:
        if self.schedule.in_flight or self.queue:
            log.info("asynchronous server: %d job(s) still in flight or not applied at the end are dropped",
                     len(self.schedule.in_flight) + len(self.queue))
