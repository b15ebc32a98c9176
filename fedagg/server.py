"""fedagg's server loop: one :class:`FedaggStrategy` and its callbacks.

``run_server`` is the body of every fedagg ServerApp (simulation runtimes and
the deployment app): it builds the strategy for the experiment's rule, then
calls ``strategy.start(...)`` -- Flower's loop -- with the callbacks that
write metrics, checkpoints, the console line and the final model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from . import dp
from .aggregators.asynchronous import AsyncServerStep
from .callbacks import (
    Checkpoints,
    ClientEvaluation,
    ConsoleLine,
    FinalSave,
    MetricLogger,
    MetricsFiles,
    NodeAccuracy,
    Outcome,
    Progress,
    SimClock,
)
from .env import devices as dev
from .env.events import Schedule
from .flower.async_loop import AsyncLoop
from .flower.callbacks import RoundCallback
from .flower.codec import params_to_record, record_to_params
from .flower.options import FlowerOptions
from .flower.realtime_loop import RealTimeLoop
from .flower.strategy import FedaggStrategy
from .outcomes import RunGuard, early_round_warning
from .report.loggers import make_logger
from .report.metrics import Recorder, run_title
from .task.train import evaluate, set_params

if TYPE_CHECKING:
    from .experiment import Experiment

log = logging.getLogger("fedagg")


def make_strategy(exp: Experiment) -> FedaggStrategy:
    """The experiment's rule as a Flower strategy driving fedagg's ClientApp."""
    cfg = exp.cfg
    return FedaggStrategy(
        exp.aggregator, seed=cfg.seed, participation=exp.participation,
        heterogeneity=exp.clock if exp.clock is not None else exp.heterogeneity,  # the clock cuts at the deadline
        instruction=exp.instruction, options=FlowerOptions(fraction_evaluate=1.0 if cfg.eval.every else 0.0),
        evaluate_every=max(1, cfg.eval.every), evaluate_initial=bool(cfg.eval.every),
        connect_timeout=cfg.server.connect_timeout,
        max_update_norm=cfg.validation.max_update_norm,
        assign_unknown_nodes=False,  # fedagg's ClientApp says its partition-id; a silent node is broken
        max_failed_rounds=0,  # the Outcome callback applies server.max_failed_rounds (status.json, checkpoint)
        log_rounds=False,  # the ConsoleLine callback prints fedagg's own line per round
    )


def make_async_loop(exp: Experiment, strategy: FedaggStrategy) -> AsyncLoop:
    """``server.mode`` = fedasync | fedbuff | fedfix: the schedule on the experiment's clock and the server step."""
    from .config import async_sizes

    cfg, s = exp.cfg, exp.cfg.server
    assert exp.clock is not None  # check_async: the simulation's asynchronous modes need the virtual clock
    concurrency, buffer_size = async_sizes(cfg)
    schedule = Schedule(s.mode, exp.clock, cfg.num_clients, cfg.seed, concurrency, buffer_size, s.window_s)
    return AsyncLoop(strategy, schedule, _async_step(exp))


def make_realtime_loop(exp: Experiment, strategy: FedaggStrategy) -> RealTimeLoop:
    """The asynchronous modes in a deployment: the same server step, on real time in arrival order."""
    from .config import async_sizes
    from .env.realtime import RealTimeSchedule

    cfg, s = exp.cfg, exp.cfg.server
    concurrency, buffer_size = async_sizes(cfg)
    schedule = RealTimeSchedule(s.mode, cfg.num_clients, cfg.seed, concurrency, buffer_size, s.window_s)
    return RealTimeLoop(strategy, schedule, _async_step(exp), stall_s=s.connect_timeout)


def _async_step(exp: Experiment) -> AsyncServerStep:
    from .aggregators.fedau import FedAU
    from .aggregators.fedavg import FedAvg
    from .aggregators.feddisco import FedDisco

    cfg, s = exp.cfg, exp.cfg.server
    assert isinstance(exp.aggregator, (FedAvg, FedDisco, FedAU))  # config.check_async refused the rest
    sizes = np.array([exp.fd.train_size(c) for c in range(cfg.num_clients)], dtype=np.float64)
    return AsyncServerStep(s.mode, exp.aggregator, alpha=s.alpha, staleness=s.staleness, staleness_a=s.staleness_a,
                           staleness_b=s.staleness_b, window_s=s.window_s, data_share=sizes / sizes.sum())


def write_devices(exp: Experiment, out: Path) -> None:
    """devices.csv: every client's drawn device in the trace format (device_profile=trace), so the run can be
    replayed and checked by hand; a trace whose devices change over rounds is written whole, with its ``round``
    column (a row holds from its round until the client's next row)."""
    assert exp.clock is not None
    profile = exp.clock.profile
    changes = [profile.change_rounds(c) for c in range(exp.cfg.num_clients)]
    per_round = any(len(rs) > 1 for rs in changes)
    lines = ["client," + ",".join(dev.FIELDS) + (",round" if per_round else "")]
    for c, rs in enumerate(changes):
        for r in rs:
            d = profile.device(r, c).as_dict()
            lines.append(f"{c}," + ",".join(repr(float(d[f])) for f in dev.FIELDS) + (f",{r}" if per_round else ""))
    (out / "devices.csv").write_text("\n".join(lines) + "\n")


class ServerEvaluation:
    """The global model scored on the server's test set: Flower's ``evaluate_fn(server_round, arrays)`` (round 0,
    the initial model, is not scored: fedagg's metrics start after round 1), and :meth:`params` for a loop that
    holds the model as numpy parameters (the asynchronous modes score every server update: no ArrayRecord is
    built and read back for it)."""

    def __init__(self, exp: Experiment) -> None:
        self.model, self.x, self.y = exp.model(), exp.x_test, exp.y_test

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        return None if server_round == 0 else self.params(server_round, record_to_params(arrays))

    def params(self, server_round: int, params: dict[str, np.ndarray]) -> MetricRecord:
        set_params(self.model, params)
        loss, acc = evaluate(self.model, self.x, self.y)
        return MetricRecord({"loss": loss, "accuracy": acc})


def run_server(grid: Grid, exp: Experiment, out_dir: str | Path, *, real_time: bool = False) -> list[dict[str, Any]]:
    """Connect, run all rounds, write results; returns the metrics rows. ``real_time`` (the deployment
    app): the asynchronous modes run on real time, in the order the replies arrive (RealTimeLoop), not on
    the virtual clock."""
    from . import checkpoint as ckpt

    cfg, out = exp.cfg, Path(out_dir)
    strategy = make_strategy(exp)
    evaluate_fn = ServerEvaluation(exp)

    recorder = Recorder(out)
    strategy.params = exp.init_params(0)
    asynchronous = cfg.server.mode != "sync"
    if asynchronous:
        exp.async_loop = make_realtime_loop(exp, strategy) if real_time else make_async_loop(exp, strategy)
    start = 1
    if exp.resume_state is not None:
        start = ckpt.restore(exp.resume_state, exp, strategy, recorder) + 1
        exp.resume_state = None  # restored; do not hold its copy of the models for the whole run
        log.info("resumed from %s at round %d", cfg.resume, start)
    total = cfg.rounds
    every = cfg.checkpoint.every
    title = run_title(cfg.aggregator, cfg.dataset["name"], cfg.partition["name"], cfg.seed)
    callbacks: list[RoundCallback] = [
        Progress(), MetricsFiles(recorder), MetricLogger(make_logger(cfg.logger, out), recorder), ConsoleLine(total),
    ]
    if cfg.eval.every:  # per-client scores before MetricsFiles writes the round
        callbacks.insert(1, ClientEvaluation(exp, recorder))
    if exp.aggregator.per_node_models:  # gossip: every node's accuracy, not only the mean model's
        callbacks.insert(0, NodeAccuracy(exp))
    if exp.clock is not None:
        write_devices(exp, out)
    if exp.clock is not None and not asynchronous:  # sim_time_s and each client's seconds, before MetricsFiles
        callbacks.insert(next(i for i, cb in enumerate(callbacks) if isinstance(cb, MetricsFiles)), SimClock(exp.clock))
    if every:
        callbacks.append(Checkpoints(out, every, total, exp, recorder))
    accepted_before = any(int(r.get("clients_replied") or 0) > 0 for r in recorder.rows)  # a resume's earlier rounds
    guard = RunGuard(cfg.server.max_failed_rounds, accepted_before)
    callbacks.append(Outcome(guard, out, every, total, exp, recorder))
    callbacks.append(FinalSave(out, exp, recorder, title))
    hint = early_round_warning(cfg.aggregator["name"], cfg.participation["name"], cfg.aggregator.get("server_lr"))
    if hint:
        log.warning(hint)
    if asynchronous:  # the asynchronous modes' loop (no DP wrapper: config.check_async refused one)
        exp.async_loop.start(grid, num_rounds=total, timeout=cfg.server.round_timeout, evaluate_fn=evaluate_fn,
                             callbacks=callbacks, start_round=start)
        return recorder.rows
    via = dp.wrap(strategy, cfg)  # dp.mode: Flower's DP wrapper runs the rounds around the strategy
    if via is not None:
        callbacks.insert(0, dp.NoiseSeed(cfg.seed))
        dp.restore(via, recorder.rows)
    strategy.start(
        grid, initial_arrays=params_to_record(strategy.params), num_rounds=total,
        timeout=cfg.server.round_timeout, evaluate_fn=evaluate_fn,
        callbacks=callbacks, start_round=start, via=via,
    )
    return recorder.rows


def make_server_app(exp: Experiment, out_dir: str | Path, result: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to one experiment (used by the simulation runtimes,
    whose ServerApp Context carries no run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rows = run_server(grid, exp, out_dir)
        if result is not None:
            result["rows"] = rows

    return app
