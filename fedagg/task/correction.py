"""Client-side terms of the drift-correcting rules, in local training (torch-free numpy here).

A :class:`Correction` is what a client applies in every local step of a round, built from the
instruction's ``terms`` (``{"rule": "scaffold" | "fedavg_m", "beta": β}``), the arrays the server
sent (SCAFFOLD's control variate ``c.<name>``, the momentum ``g.<name>``) and the client's own
state (its control variate c_i, zeros the first time it is asked). Two forms:

* ``post_step`` -- SCAFFOLD without momentum (β = 1), as NIID-Bench's ``train_net_scaffold``
  (Xtra-Computing/NIID-Bench, ``experiments.py`` @ 90cc8de): after the optimiser's step,
  ``p <- p - lr * (c - c_i)``; weight decay and SGD momentum act on the plain gradient only.
* ``mix`` -- SCAFFOLD-M / FedAvg-M (Cheng et al., ICLR 2024, Algorithms 1 and 2): the gradient is
  replaced, before the optimiser's step, by ``β (grad - c_i + c) + (1 - β) g`` (FedAvg-M:
  ``β grad + (1 - β) g``); weight decay and SGD momentum, if set, act on that direction.

:func:`finish` gives the client's new state and what its reply carries besides the model
(``dc.<name>`` = c_i+ - c_i, and ``lr_steps`` = K·η: the round's learning rate times the steps
actually taken). The control-variate update is SCAFFOLD's option II,
``c_i+ = c_i - c + (x - y_i) / (K η)`` (K: the steps actually taken, as NIID-Bench counts them);
with β < 1 the same identity solved for the mean local gradient,
``c_i+ = ((x - y_i)/(K η) - (1 - β) g) / β - c + c_i`` -- which is exactly the mean of the
round's local gradients when SGD has no momentum and no weight decay (SCAFFOLD-M's c_i update).

FedDyn (Acar et al., ICLR 2021; ``{"rule": "feddyn", "alpha": α}``) is the same mechanism: its
dynamic regulariser ``-<∇L_k(θ_k^{t-1}), θ> + (α/2)||θ - x||²`` adds the constant ``α (h_k - x)``
to every gradient (``c_diff`` here) and ``α`` to the weight decay (:attr:`Correction.extra_wd`),
as FedDisco's ``algorithms/feddyn.py`` writes it (a linear penalty and the optimiser's weight
decay); the client's state h_k (= -∇L_k(θ_k^{t-1})/α) becomes ``h_k + (y_k - x)``.

MOON (``{"rule": "moon", "mu": μ, "temperature": τ}``) adds to the loss, not the gradients
(:mod:`fedagg.task.contrastive`); its state is the client's previous local model (none before its
first round) and becomes the model it trained.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]
RULES = ("scaffold", "fedavg_m", "feddyn", "moon")
SERVER_C = "c."  # server arrays: control variate c
SERVER_G = "g."  # server arrays: momentum g
REPLY_DC = "dc."  # reply: c_i+ - c_i
LR_STEPS = "lr_steps"  # reply: K * lr, shape (1,), float64


def missing_term_problem(rule: str, term: str, extras: Mapping[str, np.ndarray] | None) -> str | None:
    """The refusal of a reply without ``LR_STEPS``: its client did not apply ``rule``'s ``term`` in local
    training (fedagg's ClientApp applies it and says so with ``LR_STEPS``); None when the reply has it."""
    if extras is not None and LR_STEPS in extras:
        return None
    return (f"aggregator '{rule}' needs {term} applied in local training, which fedagg's ClientApp does and says "
            f"with '{LR_STEPS}' in the reply's 'fedagg.rule-reply' ArrayRecord; this reply lacks it")


@dataclass(frozen=True)
class Correction:
    rule: str
    beta: float
    names: tuple[str, ...]  # the parameters the term acts on (the model's learnable ones)
    c_diff: Params | None  # c - c_i, per name (SCAFFOLD)
    g: Params | None  # the server's momentum (β < 1)
    c: Params | None  # the server's control variate (to compute c_i+)
    c_i: Params | None  # the client's control variate this round (FedDyn: its h_k)
    extra_wd: float = 0.0  # added to the optimiser's weight decay (FedDyn's alpha)
    mu: float = 0.0  # MOON: the contrastive term's weight
    temperature: float = 1.0  # MOON: tau

    @property
    def post_step(self) -> bool:
        """SCAFFOLD without momentum: the correction is a separate step after the optimiser's."""
        return self.rule == "scaffold" and self.beta == 1.0

    @property
    def stateful(self) -> bool:
        return self.rule in ("scaffold", "feddyn", "moon")

    @property
    def gradient_terms(self) -> bool:
        """Whether the rule adds to the gradients (MOON adds to the loss instead)."""
        return self.rule != "moon"


def _pick(arrays: Mapping[str, np.ndarray], prefix: str, names: tuple[str, ...], what: str) -> Params:
    missing = [n for n in names if prefix + n not in arrays]
    if missing:
        raise ValueError(f"the message's 'fedagg.rule-server' record lacks the {what} array {prefix}{missing[0]} "
                         f"(and {len(missing) - 1} more): the strategy did not send the rule's arrays")
    return {n: np.asarray(arrays[prefix + n]) for n in names}


def _state(state: Mapping[str, np.ndarray] | None, params: Mapping[str, np.ndarray], names: tuple[str, ...]) -> Params:
    """The client's stored state, or zeros when it is asked for the first time."""
    if not state:
        return {n: np.zeros_like(np.asarray(params[n])) for n in names}
    if sorted(state) != sorted(names):
        raise ValueError(f"client state holds {sorted(state)[:3]}..., the model's parameters are "
                         f"{list(names)[:3]}...: a state of another model")
    return {n: np.asarray(state[n]) for n in names}


def build(terms: Mapping[str, object], server: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray] | None,
          params: Mapping[str, np.ndarray], names: tuple[str, ...]) -> Correction:
    """The correction of one client this round. ``state``: its control variate as stored (None or
    empty: asked for the first time -- zeros); ``params``: the model it starts from (shapes, dtypes)."""
    rule = str(terms.get("rule"))
    if rule not in RULES:
        raise ValueError(f"instruction terms name rule {rule!r}; fedagg's ClientApp knows {', '.join(RULES)}")
    if rule == "moon":  # c_i: the client's previous local model (None in its first round)
        mu, tau = float(terms.get("mu", 0.0)), float(terms.get("temperature", 0.5))  # type: ignore[arg-type]
        if not (mu >= 0 and tau > 0):
            raise ValueError(f"instruction terms mu={mu} must be >= 0 and temperature={tau} > 0")
        prev = _state(state, params, names) if state else None
        return Correction(rule, 1.0, names, None, None, None, prev, mu=mu, temperature=tau)
    if rule == "feddyn":
        alpha = float(terms.get("alpha", 0.0))  # type: ignore[arg-type]
        if not alpha > 0:
            raise ValueError(f"instruction terms alpha={alpha} must be > 0")
        h = _state(state, params, names)
        lin = {n: np.asarray(alpha * (h[n] - np.asarray(params[n])), dtype=np.asarray(params[n]).dtype)
               for n in names}
        return Correction(rule, 1.0, names, lin, None, None, h, extra_wd=alpha)
    beta = float(terms.get("beta", 1.0))  # type: ignore[arg-type]
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"instruction terms beta={beta} must be in (0, 1]")
    g = _pick(server, SERVER_G, names, "momentum") if beta < 1.0 else None
    c = c_i = c_diff = None
    if rule == "scaffold":
        c = _pick(server, SERVER_C, names, "control variate")
        c_i = _state(state, params, names)
        c_diff = {n: c[n] - c_i[n] for n in names}
    return Correction(rule, beta, names, c_diff, g, c, c_i)


def finish(corr: Correction, start: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], steps: int,
           lr: float) -> tuple[Params | None, Params]:
    """(the client's new state or None, the reply's extra arrays) after ``steps`` local steps at ``lr``."""
    ls = float(steps) * float(lr)
    extras: Params = {LR_STEPS: np.array([ls], dtype=np.float64)}
    if not corr.stateful:
        return None, extras
    if corr.rule == "moon":  # the model this round trained is next round's previous model
        return {n: np.asarray(trained[n]).copy() for n in corr.names}, extras
    if corr.rule == "feddyn":  # h_k + (y_k - x)
        assert corr.c_i is not None
        return {n: corr.c_i[n] + (np.asarray(trained[n]) - np.asarray(start[n])) for n in corr.names}, extras
    assert corr.c is not None and corr.c_i is not None
    new: Params = {}
    for n in corr.names:
        x, y = np.asarray(start[n]), np.asarray(trained[n])
        drift = (x - y) / ls if ls > 0 else np.zeros_like(x)
        if corr.beta == 1.0:  # option II, NIID-Bench's order: c_i - c + (x - y) / (K lr)
            new[n] = corr.c_i[n] - corr.c[n] + drift
        else:
            assert corr.g is not None
            new[n] = (drift - (1.0 - corr.beta) * corr.g[n]) / corr.beta - corr.c[n] + corr.c_i[n]
        new[n] = new[n].astype(x.dtype, copy=False)
        extras[REPLY_DC + n] = new[n] - corr.c_i[n]
    return new, extras
