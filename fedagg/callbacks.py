"""What a fedagg run does around each round, as :class:`RoundCallback` objects
for :meth:`FedaggStrategy.start`: the metrics files, an optional metric logger
(TensorBoard), the console line, checkpoints, and the final model and plot.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.serverapp.strategy import Result

from . import checkpoint as ckpt
from .console import ProgressBar
from .env.clock import Clock
from .flower.callbacks import RoundCallback
from .flower.strategy import FedaggStrategy, RoundRecord
from .outcomes import RunGuard, RunInterrupted, rounds_begin
from .report import loggers
from .report.metrics import Recorder, distribution
from .task.train import evaluate, set_params

if TYPE_CHECKING:
    from .experiment import Experiment

log = logging.getLogger("fedagg")


class NodeAccuracy(RoundCallback):
    """Rules that keep one model per client (gossip): after each round every
    node's model is scored on the test set, so the nodes' accuracy is reported
    and not only their mean model's. Adds ``node_accuracy_mean`` and
    ``node_accuracy_worst`` (metrics.csv) and ``node_accuracy`` (one value per
    node, rounds.jsonl) to the round's metrics; list it before MetricsFiles."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.model = exp.model()

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        agg, x, y = strategy.aggregator, self.exp.x_test, self.exp.y_test
        accs = []
        for n in range(int(self.exp.cfg.num_clients)):
            set_params(self.model, agg.params_for(n, strategy.params))
            accs.append(evaluate(self.model, x, y)[1])
        record.agg_metrics["node_accuracy_mean"] = sum(accs) / len(accs)
        record.agg_metrics["node_accuracy_worst"] = min(accs)
        record.agg_metrics["node_accuracy"] = accs
        return False


class SimClock(RoundCallback):
    """The virtual clock closes each round: ``sim_time_s`` (cumulative simulated seconds at the round's end,
    metrics.csv) and ``sim`` (the round's start, end and deadline, and every asked client's device, steps,
    seconds and outcome, rounds.jsonl). List it before MetricsFiles."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        t = self.clock.finish_round(record.round, record.asked)
        sim: Any = t.log()  # a nested record for rounds.jsonl, not a Flower metric
        record.agg_metrics = {**record.agg_metrics, "sim_time_s": t.end_s, "sim": sim}
        return False


class MetricsFiles(RoundCallback):
    """metrics.csv and rounds.jsonl: one row / one line per round (the Recorder)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        self.recorder.add(record)
        return False


class MetricLogger(RoundCallback):
    """Hands each metrics.csv row to a logger (``logger=tensorboard``); closes it at the end."""

    def __init__(self, logger: loggers.MetricLogger, recorder: Recorder) -> None:
        self.logger, self.recorder = logger, recorder

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        self.logger.log(self.recorder.rows[-1])
        return False

    def on_train_end(self, strategy: FedaggStrategy, result: Result) -> None:
        self.logger.close()


class ConsoleLine(RoundCallback):
    """One progress line per round on the ``fedagg`` logger."""

    def __init__(self, total: int) -> None:
        self.total = total

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        r = record
        log.info(
            "round %d/%d | asked %d replied %d failed %d rejected %d | train_loss %s | test_acc %.4f test_loss %.4f | %.2fs",
            r.round, self.total, len(r.asked), len(r.replied), len(r.failed), len(r.rejected),
            "n/a" if r.train_loss is None else f"{r.train_loss:.4f}",
            float("nan") if r.test_accuracy is None else r.test_accuracy,
            float("nan") if r.test_loss is None else r.test_loss, r.seconds,
        )
        return False


class Checkpoints(RoundCallback):
    """checkpoint.pkl every ``every`` rounds and after the last one (atomic)."""

    def __init__(self, out: Path, every: int, total: int, exp: Experiment, recorder: Recorder) -> None:
        self.out, self.every, self.total, self.exp, self.recorder = out, every, total, exp, recorder

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        if record.round % self.every == 0 or record.round == self.total:
            ckpt.save(self.out, record.round, self.exp, strategy, self.recorder)
        return False


class FinalSave(RoundCallback):
    """model.pt (the final global state_dict) and accuracy.png."""

    def __init__(self, out: Path, exp: Experiment, recorder: Recorder, title: str) -> None:
        self.out, self.exp, self.recorder, self.title = out, exp, recorder, title

    def on_train_end(self, strategy: FedaggStrategy, result: Result) -> None:
        model = self.exp.model()
        set_params(model, strategy.params)
        torch.save(model.state_dict(), self.out / "model.pt")
        self.recorder.plot(self.title)


class Outcome(RoundCallback):
    """Stops the run early (``RunGuard``): failed after ``server.max_failed_rounds``
    rounds without an accepted update, interrupted after a SIGINT/SIGTERM -- then
    with a checkpoint of this round when checkpointing is on; and fails a run
    that accepted no update at all. The start of the first round ends the
    start-up (a signal before it stops the run at once). The reason is left in
    ``exp.outcome`` for the caller to raise once the runtime is down."""

    def __init__(self, guard: RunGuard, out: Path, every: int, total: int, exp: Experiment,
                 recorder: Recorder) -> None:
        self.guard, self.out, self.every, self.total, self.exp, self.recorder = guard, out, every, total, exp, recorder
        self.last_round = 0

    def on_train_begin(self, strategy: FedaggStrategy, *, start_round: int, num_rounds: int) -> None:
        self.last_round = start_round - 1
        rounds_begin()

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        self.last_round = record.round
        if not self.guard.after_round(record.round, len(record.asked), len(record.replied), record.failed,
                                      record.rejected):
            return False
        saved = self.every and (record.round % self.every == 0 or record.round == self.total)
        if isinstance(self.guard.outcome, RunInterrupted) and self.every and not saved:
            ckpt.save(self.out, record.round, self.exp, strategy, self.recorder)  # resume from here
        self.exp.outcome = self.guard.outcome
        return True

    def on_train_end(self, strategy: FedaggStrategy, result: Result) -> None:
        self.guard.at_end(self.last_round)
        self.exp.outcome = self.guard.outcome


class Progress(RoundCallback):
    """A progress bar with ETA on a terminal (nothing in logs and CI)."""

    def __init__(self) -> None:
        self.bar = ProgressBar()

    def on_train_begin(self, strategy: FedaggStrategy, *, start_round: int, num_rounds: int) -> None:
        self.bar.begin(start_round, num_rounds)

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        self.bar.update(record.test_accuracy)
        return False

    def on_train_end(self, strategy: FedaggStrategy, result: Result) -> None:
        self.bar.end()


class ClientEvaluation(RoundCallback):
    """``eval.every=k``: every client's accuracy on its held-out split (the
    ClientApp's evaluate) goes to rounds.jsonl (``client_accuracy``, indexed by
    client id, null = not scored), its spread across clients to metrics.csv
    (``client_acc_mean/std/worst10/best10``). The initial model's scores are a
    round-0 row. Put it before MetricsFiles."""

    def __init__(self, exp: Experiment, recorder: Recorder) -> None:
        self.exp, self.recorder = exp, recorder
        self._round0_done = False

    def _metrics(self, scores: dict[int, tuple[float, float, int]]) -> dict[str, Any]:
        n = self.exp.cfg.num_clients
        accs = [scores[c][0] if c in scores else None for c in range(n)]
        return {**distribution([a for a in accs if a is not None]), "client_accuracy": accs}

    def after_round(self, record: RoundRecord, strategy: FedaggStrategy) -> bool:
        if not self._round0_done and 0 in strategy.client_scores:
            model = self.exp.model()
            set_params(model, self.exp.init_params(0))
            loss, acc = evaluate(model, self.exp.x_test, self.exp.y_test)
            zero = RoundRecord(0, [], [], {}, {}, None, self._metrics(strategy.client_scores.pop(0)), loss, acc)
            self.recorder.add(zero)
        self._round0_done = True
        scores = strategy.client_scores.pop(record.round, None)
        if scores:
            record.agg_metrics = {**record.agg_metrics, **self._metrics(scores)}
        return False
