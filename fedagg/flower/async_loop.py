"""The server loop of the asynchronous modes (``server.mode`` = fedasync | fedbuff | fedfix).

This module is the simulation's loop (:class:`AsyncLoop`, on the virtual clock) and what it shares with the
deployment's real-time loop (:class:`AsyncUpdates`: applying one server update, and the loop of updates with
the round callbacks; the real-time loop is :mod:`fedagg.flower.realtime_loop`).

Each pass of :meth:`AsyncLoop.start` is one server update (``rounds`` counts them):

1. :meth:`Schedule.advance <fedagg.env.events.Schedule.advance>` runs the virtual clock's events up to the next
   server update: the jobs it dispatched on the way (all sent the current model) and the jobs the update
   applies, in the order applied;
2. the dispatched jobs wait, with the model they were sent, until an update applies a job not yet trained;
   then every waiting job trains at once, whatever version it was sent: one ``grid.send_and_receive`` with
   one TRAIN message per job, ``server-round`` = the version the job's dispatch helped create (so the
   simulation grids cut them into vectorised chunks over the Ray pool, a chunk stacking several versions,
   each client on its own round's shuffle stream) -- a job's numbers never depend on when or with whom it
   trains, and the order of events is the clock's alone; the validated updates wait until the update that
   applies them. (FedAsync dispatches one job per update: trained one version at a time, its batches
   would be single clients.);
3. :class:`~fedagg.aggregators.asynchronous.AsyncServerStep` applies the arrived updates (staleness, weights);
4. the server model is evaluated and the round callbacks see a :class:`RoundRecord` per update (metrics.csv
   and rounds.jsonl rows, the console line, checkpoints, the run's outcome).

A job whose training failed or whose reply was rejected is reported (``failed`` / ``rejected``) by the
update at which it arrives. The waiting updates, their models and the schedule are :meth:`state_dict`, which
the checkpoint holds, so a killed and resumed run is bitwise the uninterrupted one.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from ..aggregators.asynchronous import Applied, AsyncServerStep
from ..aggregators.base import ClientUpdate, Params, RoundInfo
from ..env.events import Job, Schedule, Step
from .callbacks import RoundCallback
from .codec import params_to_record
from .strategy import FedaggStrategy, RoundRecord, train_loss_of

log = logging.getLogger("fedagg")

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class Waiting:
    """Jobs dispatched with one model version, not trained yet."""

    version: int  # their messages' server-round
    jobs: list[Job]
    sent: Params  # the global model they were sent


@dataclass
class Trained:
    """A dispatched job's result, held until the update that applies it."""

    update: ClientUpdate | None  # None: it failed or was rejected
    sent: Params  # the model it was sent (shared by the jobs of one version)
    failed: str | None = None
    rejected: str | None = None


class AsyncUpdates:
    """What both asynchronous loops share: one server update from the jobs a :class:`Step` applies (their
    results in :attr:`trained`, by job number) and the loop of updates with the callbacks. The subclass says
    when the next update happens and which jobs it applies (:meth:`update`): :class:`AsyncLoop` on the
    virtual clock, :class:`~fedagg.flower.realtime_loop.RealTimeLoop` on real time in a deployment."""

    clock_name = "virtual clock"

    def __init__(self, strategy: FedaggStrategy, step: AsyncServerStep, mode: str, concurrency: int) -> None:
        self.strategy, self.step, self.mode, self.concurrency = strategy, step, mode, int(concurrency)
        self.trained: dict[int, Trained] = {}  # job seq -> its result

    def apply(self, st: Step, dispatched: Sequence[Mapping[str, Any]], trained: int | None = None) -> RoundRecord:
        """The server update ``st`` (version ``st.version``, the jobs ``st.applied`` in the order applied) by
        :class:`AsyncServerStep`; ``dispatched``: the jobs sent since the previous update (logged);
        ``trained``: how many jobs trained together just before it (simulation; logged)."""
        s = self.strategy
        items: list[Applied] = []
        jobs: list[Job] = []
        failed: dict[int, str] = {}
        rejected: dict[int, str] = {}
        for j in st.applied:
            t = self.trained.pop(j.seq)
            if t.update is None:
                if t.rejected is not None:
                    rejected[j.client] = t.rejected
                else:
                    failed[j.client] = t.failed or "no reply"
                continue
            items.append(Applied(t.update, t.sent, st.staleness(j), j.duration_s))
            jobs.append(j)
        asked = [j.client for j in st.applied]
        info = RoundInfo(st.version, s.num_clients or 0, tuple(sorted(set(asked))), tuple(j.client for j in jobs))
        s.params, w = self.step.apply(s.params, items, info)
        applied = [{**j.log(), "staleness": it.staleness, "weight": float(wk)}
                   for j, it, wk in zip(jobs, items, w)]
        tau = [it.staleness for it in items]
        metrics: dict[str, Any] = {
            "model_version": st.version, "sim_time_s": st.time_s, "clients_dispatched": len(dispatched),
            "staleness_mean": float(np.mean(tau)) if tau else None, "staleness_max": max(tau) if tau else None,
            "async": {"mode": self.mode, "time_s": st.time_s, "applied": applied, "dispatched": list(dispatched)},
        }
        if trained is not None:
            metrics["async"]["trained"] = trained
        return RoundRecord(st.version, asked, [j.client for j in jobs], failed, rejected,
                           train_loss_of([it.update for it in items]), metrics)

    def update(self, grid: Grid, timeout: float | None) -> RoundRecord:
        """Wait for (or run the events up to) the next server update and apply it."""
        raise NotImplementedError

    def finish(self, grid: Grid) -> None:
        """After the last update (the real-time loop: say what is still in flight)."""

    # -- the loop ---------------------------------------------------------------------
    def start(self, grid: Grid, *, num_rounds: int, timeout: float | None, evaluate_fn: EvaluateFn | None,
              callbacks: Sequence[RoundCallback] = (), start_round: int = 1) -> Result:
        """Server updates ``start_round`` .. ``num_rounds``, with the callbacks of a synchronous run."""
        s = self.strategy
        result = Result()
        s.connect(grid)
        if hasattr(grid, "chunk_replies"):  # fedagg's grids: a chunk's reply read as it is
            grid.chunk_replies = True
        s.summary()
        log.info("asynchronous server (%s): mode=%s, %d clients in flight", self.clock_name, self.mode,
                 self.concurrency)
        for cb in callbacks:
            cb.on_train_begin(s, start_round=start_round, num_rounds=num_rounds)
        by_params = getattr(evaluate_fn, "params", None)  # fedagg's own evaluation takes the parameters as they are
        for rnd in range(start_round, num_rounds + 1):
            t0 = time.perf_counter()
            record = s.last_record = self.update(grid, timeout)
            assert record.round == rnd, (record.round, rnd)
            if evaluate_fn is not None:
                res = by_params(rnd, s.params) if by_params else evaluate_fn(rnd, params_to_record(s.params))
                if res is not None:
                    result.evaluate_metrics_serverapp[rnd] = res
                    loss, acc = res.get("loss"), res.get("accuracy")
                    record.test_loss = float(loss) if isinstance(loss, (int, float)) else None
                    record.test_accuracy = float(acc) if isinstance(acc, (int, float)) else None
            record.seconds = time.perf_counter() - t0
            if any([cb.after_round(record, s) for cb in callbacks]):
                log.info("update %d: a callback stopped training", rnd)
                break
        result.arrays = params_to_record(s.params)
        self.finish(grid)
        for cb in callbacks:
            cb.on_train_end(s, result)
        return result


class AsyncLoop(AsyncUpdates):
    """The asynchronous modes in simulation: the order of events is the virtual clock's (module docstring)."""

    def __init__(self, strategy: FedaggStrategy, schedule: Schedule, step: AsyncServerStep) -> None:
        super().__init__(strategy, step, schedule.mode, schedule.concurrency)
        self.schedule = schedule
        self.waiting: list[Waiting] = []

    # -- one server update ---------------------------------------------------------------
    def _train(self, version: int, grid: Grid, timeout: float | None) -> int:
        """Every waiting job; how many. A client can wait with two jobs (one that arrived untrained, and the
        one it was sent next), and a call's replies are matched by node: a job goes into the first call
        without its client, so the calls are as few as that allows (one, mostly)."""
        calls: list[list[tuple[Waiting, Job]]] = []
        for w in self.waiting:
            for j in w.jobs:
                call = next((c for c in calls if all(k.client != j.client for _, k in c)), None)
                if call is None:
                    calls.append(call := [])
                call.append((w, j))
        for call in calls:
            self._train_call(version, call, grid, timeout)
        self.waiting = []
        return sum(len(c) for c in calls)

    def _train_call(self, version: int, call: Sequence[tuple[Waiting, Job]], grid: Grid,
                    timeout: float | None) -> None:
        s = self.strategy
        msgs: list[Any] = []
        jobs: dict[int, tuple[int, Params]] = {}
        groups: dict[int, tuple[Waiting, list[Job]]] = {}  # the call's jobs by the version they were sent
        for w, j in call:
            groups.setdefault(id(w), (w, []))[1].append(j)
        for w, group in groups.values():
            msgs += s.train_messages(w.version, [j.client for j in group], params_to_record(w.sent),
                                     ConfigRecord(), model=w.sent)
            jobs.update(s.sent_jobs())
        for m in msgs:  # one call: its replies are matched by node
            m.metadata.group_id = str(version)
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        updates, _, failed, rejected = s.collect(version, replies, jobs=jobs)
        got = {u.client_id: u for u in updates}
        for w, j in call:
            self.trained[j.seq] = Trained(got.get(j.client), w.sent, failed.get(j.client), rejected.get(j.client))

    def update(self, grid: Grid, timeout: float | None) -> RoundRecord:
        st = self.schedule.advance()
        if st.dispatched:
            self.waiting.append(Waiting(st.version, list(st.dispatched), self.strategy.params))
        trained = self._train(st.version, grid, timeout) if any(j.seq not in self.trained for j in st.applied) else 0
        return self.apply(st, [j.log() for j in st.dispatched], trained)

    # -- checkpoint -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "trained": dict(self.trained),
                "waiting": list(self.waiting)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.trained = dict(state["trained"])
        self.waiting = list(state.get("waiting", []))
