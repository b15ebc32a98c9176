"""A client's work in one round, planned once: how many minibatch steps it
takes, and what becomes of them.

The one rule for the step count lives here (:func:`planned_steps`), so does the
round's learning rate (:func:`round_lr`), and the
simulation's plan for a client (its fault, its work fraction; a dropout
trains half the round, then disappears) becomes a :class:`WorkPlan` in
:func:`plan_work`. Local training (:func:`fedagg.task.train.train_local`),
stacked cohorts (:func:`fedagg.task.cohort.train_cohort`), the chunk
planning of the simulation grids and the ClientApp all read it from here.
"""
from __future__ import annotations

from dataclasses import dataclass

DROPOUT_WORK = 0.5  # a client that drops out mid-round trains this share of its steps first


def round_lr(lr: float, round: int, decay: float = 1.0, every: int = 1) -> float:
    """The client learning rate of (1-based) round ``round``: ``lr`` times
    ``decay`` once per ``every`` completed rounds,
    ``lr * decay ** ((round - 1) // every)``. ``every=1`` is exponential decay
    per round (FedLAW's official code uses 0.99); ``every=k`` a step schedule.
    ``decay=1`` (the default) keeps ``lr`` constant."""
    if decay == 1.0:
        return lr
    return lr * decay ** ((max(round, 1) - 1) // max(every, 1))


def planned_steps(n: int, *, epochs: int, steps: int, batch_size: int, work_fraction: float) -> int:
    """Minibatch steps on a shard of ``n`` examples: ``steps`` if > 0, else
    ``epochs`` passes of ``ceil(n / batch_size)`` batches (at least one); a
    ``work_fraction`` < 1 keeps that share of them, at least one."""
    total = steps if steps > 0 else epochs * max(1, -(-n // batch_size))
    if work_fraction < 1.0:
        total = max(1, int(total * work_fraction))
    return total


@dataclass(frozen=True)
class WorkPlan:
    """What one client does this round. ``steps``: the minibatch steps it trains
    (0 for a crash, which trains nothing); ``work_fraction``: the share of its
    configured steps; ``fault``: the injected fault, if any (crash, dropout,
    deadline) -- a faulty client's work never reaches the server."""

    steps: int
    work_fraction: float
    fault: str | None = None

    @property
    def trains(self) -> bool:
        """It trains at all (every client but a crashing one)."""
        return self.fault != "crash"

    @property
    def replies(self) -> bool:
        """Its update reaches the server."""
        return self.fault is None


def plan_work(n: int, *, epochs: int, steps: int, batch_size: int, work_fraction: float = 1.0,
              fault: str | None = None) -> WorkPlan:
    """The plan of a client with ``n`` training examples (see :class:`WorkPlan`)."""
    if fault == "crash":
        return WorkPlan(0, 0.0, fault)
    work = DROPOUT_WORK if fault == "dropout" else work_fraction
    return WorkPlan(planned_steps(n, epochs=epochs, steps=steps, batch_size=batch_size, work_fraction=work),
                    work, fault)
