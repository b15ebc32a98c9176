"""The virtual clock: a round's plan and the clients' devices as simulated seconds.

Client n's time in a round (its :class:`~fedagg.env.devices.Device` d, the
model's size in bytes M, its planned local steps k, the batch size B)::

    download = d.latency_s + 8 M / (d.down_mbps * 1e6)
    compute  = k * B * d.compute_s_per_step
    upload   = d.latency_s + 8 M / (d.up_mbps * 1e6)
    seconds  = download + compute + upload          (from the start of the round)

k is what the simulation's plan says the client does (the ``heterogeneity``
group: epochs, a straggler's partial work), so a slow device is slow for a
physical reason. ``deadline_s`` (``server.deadline_s``) then cuts the round:

- ``drop``: a client whose seconds exceed the deadline misses the round
  (``fault: deadline``, no reply);
- ``partial``: it does the k' < k steps that fit,
  ``k' = floor((deadline - download - upload) / (B * compute_s_per_step))``,
  and replies at ``download + k' B c + upload <= deadline``; a client that
  fits no step misses the round.

A synchronous round ends when its last reply arrives; when a deadline is set
and an asked client does not reply (late, device off, a dropout or a
``deadline`` fault), the server waits until the deadline. An injected crash
is an immediate error and holds nothing. A round that asked nobody takes 0 s.
Comparisons with the deadline allow 1e-9 s of rounding.

Everything here is a pure function of the plan and the profile -- never of
real time -- so the deadline changes who replies and how many steps they do,
deterministically; :meth:`Clock.finish_round` advances the cumulative
simulated time ``now`` (checkpointed by ``state_dict``). Per-client arrival
times are exposed by :meth:`Clock.timing`, so an event loop can order
arrivals by (simulated time, client id).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .devices import Device, DeviceProfile

EPS = 1e-9
DEADLINE_MODES = ("drop", "partial")
# outcomes of a client in a round: ok | partial (cut to fit the deadline) | late (past the deadline) |
# off (its device is off this round) | crash | dropout | deadline (the heterogeneity plan's faults)
HOLDS_ROUND = ("late", "off", "dropout", "deadline")  # no reply: the server waits for them until the deadline

StepsFn = Callable[[int, Mapping[str, Any]], int]  # (client, plan) -> local steps it takes


class PlanSource(Protocol):
    def plan(self, round: int, client: int) -> Mapping[str, Any]: ...


def transfer_s(nbytes: int, mbps: float, latency_s: float) -> float:
    """Seconds to move ``nbytes`` over a ``mbps`` link with one-way latency ``latency_s``."""
    return latency_s + 8.0 * nbytes / (mbps * 1e6)


@dataclass(frozen=True)
class ClientTime:
    client: int
    device: Device
    plan: Mapping[str, Any]  # the plan the client receives (the deadline's cut included)
    steps: int  # local steps it takes
    download_s: float
    compute_s: float
    upload_s: float
    outcome: str

    @property
    def seconds(self) -> float:
        """When it is back, from the start of the round (inf: its device is off)."""
        return self.download_s + self.compute_s + self.upload_s

    @property
    def replies(self) -> bool:
        return self.outcome in ("ok", "partial")

    def log(self) -> dict[str, Any]:
        finite = math.isfinite(self.seconds)
        return {
            "seconds": self.seconds if finite else None, "outcome": self.outcome, "steps": self.steps,
            "download_s": self.download_s, "compute_s": self.compute_s if finite else None,
            "upload_s": self.upload_s, "device": {k: (v if math.isfinite(v) else None)
                                                  for k, v in self.device.as_dict().items()},
        }


@dataclass(frozen=True)
class RoundTime:
    round: int
    start_s: float
    end_s: float
    deadline_s: float | None
    clients: Sequence[ClientTime]

    def log(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "end_s": self.end_s, "deadline_s": self.deadline_s,
                "clients": {str(t.client): t.log() for t in self.clients}}


class Clock:
    """Wraps the heterogeneity plan (``base``) as the round's plan with the deadline applied
    (``plan(round, client)``, the strategy's Planner) and keeps the simulated time."""

    def __init__(
        self,
        profile: DeviceProfile,
        base: PlanSource,
        steps: StepsFn,
        model_bytes: int,
        batch_size: int,
        deadline_s: float | None = None,
        deadline_mode: str = "drop",
    ) -> None:
        if deadline_mode not in DEADLINE_MODES:
            raise ValueError(f"server.deadline_mode='{deadline_mode}' must be one of {', '.join(DEADLINE_MODES)}")
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ValueError(f"server.deadline_s={deadline_s} must be > 0 seconds or null (no deadline)")
        self.profile, self.base, self.steps = profile, base, steps
        self.model_bytes, self.batch_size = int(model_bytes), int(batch_size)
        self.deadline_s, self.deadline_mode = deadline_s, deadline_mode
        self.now = 0.0  # simulated seconds at the end of the last finished round
        self._round = -1
        self._times: dict[int, ClientTime] = {}

    # -- one client --------------------------------------------------------------------
    def timing(self, round: int, client: int) -> ClientTime:
        """Client ``client``'s device, plan and seconds in round ``round`` (pure; cached for the round)."""
        round, client = int(round), int(client)
        if round != self._round:
            self._round, self._times = round, {}
        t = self._times.get(client)
        if t is None:
            t = self._times[client] = self._timing(round, client)
        return t

    def _timing(self, round: int, client: int) -> ClientTime:
        d = self.profile.device(round, client)
        plan = dict(self.base.plan(round, client))
        down = transfer_s(self.model_bytes, d.down_mbps, d.latency_s)
        up = transfer_s(self.model_bytes, d.up_mbps, d.latency_s)
        step_s = self.batch_size * d.compute_s_per_step
        fault = plan.get("fault")
        if not d.online:
            return ClientTime(client, d, {**plan, "fault": "deadline"}, 0, down, math.inf, up, "off")
        k = self.steps(client, plan)
        if fault is not None:
            return ClientTime(client, d, plan, k, down, k * step_s, up, str(fault))
        t = ClientTime(client, d, plan, k, down, k * step_s, up, "ok")
        dl = self.deadline_s
        if dl is None or t.seconds <= dl + EPS:
            return t
        fit = min(k - 1, math.floor((dl - down - up) / step_s + EPS)) if dl > down + up else 0
        if self.deadline_mode == "drop" or fit < 1:
            return ClientTime(client, d, {**plan, "fault": "deadline"}, k, down, k * step_s, up, "late")
        cut = {**plan, "work_fraction": self._fraction(client, plan, fit)}
        return ClientTime(client, d, cut, fit, down, fit * step_s, up, "partial")

    def _fraction(self, client: int, plan: Mapping[str, Any], k: int) -> float:
        """The work fraction under which the client takes exactly ``k`` steps (the training code's
        rule: ``max(1, int(full * fraction))`` of the ``full`` steps)."""
        full = self.steps(client, {key: v for key, v in plan.items() if key != "work_fraction"})
        fraction = (k + 0.5) / full
        got = self.steps(client, {**plan, "work_fraction": fraction})
        if got != k:  # pragma: no cover - the rule changed: say so rather than train the wrong amount
            raise RuntimeError(f"work fraction {fraction} gives {got} steps, not the {k} that fit the deadline")
        return fraction

    def plan(self, round: int, client: int) -> dict[str, Any]:
        """The simulation's plan for ``client`` in ``round``, the deadline's cut included."""
        return dict(self.timing(round, client).plan)

    # -- one round -----------------------------------------------------------------------
    def finish_round(self, round: int, asked: Sequence[int]) -> RoundTime:
        """Close round ``round`` (the clients ``asked``) and advance ``now`` by its duration."""
        times = [self.timing(round, c) for c in sorted(asked)]
        end = max((t.seconds for t in times if t.replies), default=0.0)
        if self.deadline_s is not None and any(t.outcome in HOLDS_ROUND for t in times):
            end = self.deadline_s
        start = self.now
        self.now = start + end
        return RoundTime(int(round), start, self.now, self.deadline_s, times)

    def state_dict(self) -> dict[str, Any]:
        return {"now": self.now}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.now = float(state["now"])
