"""Device profiles: each client's compute speed, links and latency (simulation truth).

A profile is built from ``(num_clients, seed, label_hist, **options)`` and
answers ``device(round, client) -> Device``. Every draw of client n comes from
the stream ``rng(seed, "device", n)``, so a client's device is a pure function
of (seed, client) -- it never depends on who else is asked, the worker count or
a resume -- and asking for a round's clients costs O(asked), however many are
registered. A :class:`Device` has four numbers:

==================  ==============================================================================
field               meaning
==================  ==============================================================================
compute_s_per_step  seconds per local minibatch step **at batch size 1**; a step of the run's
                    ``train.batch_size`` B takes ``B * compute_s_per_step`` seconds
up_mbps             uplink bandwidth, megabits per second (10^6 bit/s)
down_mbps           downlink bandwidth, megabits per second
latency_s           one-way latency added to each transfer, seconds
==================  ==============================================================================

=========  ==========================================================================================
name       profile
=========  ==========================================================================================
none       no device model: no virtual clock (today's behaviour)
lognormal  each field ``median * exp(sigma * z)``, z ~ N(0, 1) per client and field (a heavy tail)
uniform    each field ~ U(min, max) per client
tiers      device classes: client n is class k with probability ``shares[k]``; the class fixes
           all four fields (``compute_s_per_step[k]``, ``up_mbps[k]``, ...)
trace      read from a CSV with the header ``client,compute_s_per_step,up_mbps,down_mbps,latency_s``
           and optionally ``round``: a row holds from its round until the client's next row
           (every client needs a row for round 1); ``compute_s_per_step = inf`` means the device is
           off (it misses those rounds)
=========  ==========================================================================================

Correlation with the data (every drawn profile): ``slow_labels: [c, ...]`` and
``slow_factor: f`` multiply client n's ``compute_s_per_step`` by
``1 + (f - 1) * s_n``, with s_n the share of n's training examples whose label
is in ``slow_labels`` -- slow devices hold those labels, as FedAU's
participation probabilities follow the data.
"""
from __future__ import annotations

import bisect
import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import Registry
from ..seeding import rng as named_rng

LabelHist = Callable[[int], np.ndarray]  # client -> its training label counts

_PROFILES: Registry[Callable[..., "DeviceProfile"]] = Registry("device_profile.name")
register_profile = _PROFILES.register
available = _PROFILES.available

FIELDS = ("compute_s_per_step", "up_mbps", "down_mbps", "latency_s")


@dataclass(frozen=True)
class Device:
    compute_s_per_step: float  # seconds per local step at batch size 1
    up_mbps: float
    down_mbps: float
    latency_s: float

    @property
    def online(self) -> bool:
        return math.isfinite(self.compute_s_per_step)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def check_device(d: Device, where: str) -> None:
    """Refuse a device no clock can use, naming ``where`` (the config key or trace line)."""
    if not (d.compute_s_per_step > 0 and not math.isnan(d.compute_s_per_step)):
        raise ValueError(f"{where}: compute_s_per_step={d.compute_s_per_step} must be > 0 seconds (inf = device off)")
    for name in ("up_mbps", "down_mbps"):
        v = getattr(d, name)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{where}: {name}={v} must be a finite bandwidth > 0 (megabits per second)")
    if not (math.isfinite(d.latency_s) and d.latency_s >= 0):
        raise ValueError(f"{where}: latency_s={d.latency_s} must be a finite number >= 0 seconds")


def build_device_profile(
    name: str, num_clients: int, seed: int, label_hist: LabelHist | None = None, **options: Any
) -> "DeviceProfile":
    cls = _PROFILES.get(name)
    options = {k: v for k, v in options.items() if k != "name"}
    try:
        return cls(num_clients, seed, label_hist, **options)
    except TypeError as e:
        raise ValueError(f"device_profile '{name}': bad option ({e}); check the device_profile.* keys") from e


class DeviceProfile:
    name = "base"
    enabled = True  # False: no virtual clock at all

    def __init__(
        self,
        num_clients: int,
        seed: int,
        label_hist: LabelHist | None = None,
        slow_labels: Sequence[int] | None = None,
        slow_factor: float = 1.0,
    ) -> None:
        self.num_clients, self.seed = int(num_clients), int(seed)
        self.label_hist = label_hist
        self.slow_labels = [int(c) for c in (slow_labels or [])]
        self.slow_factor = float(slow_factor)
        if not (math.isfinite(self.slow_factor) and self.slow_factor > 0):
            raise ValueError(f"device_profile.slow_factor={slow_factor} must be > 0 (1 = no correlation with labels)")
        if any(c < 0 for c in self.slow_labels):
            raise ValueError(f"device_profile.slow_labels={list(slow_labels or [])} must be class indices >= 0")
        self._needs_data = bool(self.slow_labels) and self.slow_factor != 1.0

    def device(self, round: int, client: int) -> Device:
        """Client ``client``'s device in round ``round`` (1-based); pure in (seed, round, client)."""
        client = int(client)
        if not 0 <= client < self.num_clients:
            raise ValueError(f"client={client} is out of range 0..{self.num_clients - 1}")
        d = self._device(int(round), client)
        if self._needs_data:
            d = Device(d.compute_s_per_step * self._slowdown(client), d.up_mbps, d.down_mbps, d.latency_s)
        return d

    def _device(self, round: int, client: int) -> Device:
        raise NotImplementedError

    def change_rounds(self, client: int) -> list[int]:
        """The rounds at which client ``client``'s device (re)starts; a drawn profile's device never changes."""
        return [1]

    def _slowdown(self, client: int) -> float:
        if self.label_hist is None:
            raise ValueError("device_profile.slow_labels needs the clients' label histograms; none were given")
        h = np.asarray(self.label_hist(client), dtype=np.float64)
        share = float(h[self.slow_labels].sum() / h.sum()) if h.sum() > 0 else 0.0
        return 1.0 + (self.slow_factor - 1.0) * share

    def check_labels(self, num_classes: int) -> None:
        """Refuse ``slow_labels`` outside the dataset's classes (called once the data is known)."""
        bad = [c for c in self.slow_labels if c >= num_classes]
        if bad and self._needs_data:
            raise ValueError(f"device_profile.slow_labels={self.slow_labels}: class {bad[0]} is outside "
                             f"0..{num_classes - 1} (this dataset has {num_classes} classes)")

    def _stream(self, client: int) -> np.random.Generator:
        return named_rng(self.seed, "device", client)


@register_profile("none")
class NoDevices(DeviceProfile):
    """No device model: every client is instantaneous and no virtual clock runs."""

    enabled = False

    def __init__(self, num_clients: int, seed: int, label_hist: LabelHist | None = None) -> None:
        super().__init__(num_clients, seed, label_hist)

    def _device(self, round: int, client: int) -> Device:
        return Device(0.0, math.inf, math.inf, 0.0)


def _positive(key: str, value: float, what: str, zero_ok: bool = False) -> float:
    v = float(value)
    if not (math.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
        raise ValueError(f"device_profile.{key}={value} must be {'>= 0' if zero_ok else '> 0'} ({what})")
    return v


@register_profile("lognormal")
class LogNormal(DeviceProfile):
    """Each field = ``median * exp(sigma * z)``, z ~ N(0, 1) drawn per client and field (in the order
    compute, up, down, latency). The defaults: a batch-32 step takes 32 * 2 ms = 64 ms on the median
    device, 5 Mbit/s up, 20 Mbit/s down, 50 ms latency; sigma 0.5 puts about 1 client in 40 at more
    than 2.7x the median step time."""

    def __init__(
        self,
        num_clients: int,
        seed: int,
        label_hist: LabelHist | None = None,
        compute_median: float = 0.002,
        compute_sigma: float = 0.5,
        up_median: float = 5.0,
        up_sigma: float = 0.5,
        down_median: float = 20.0,
        down_sigma: float = 0.5,
        latency_median: float = 0.05,
        latency_sigma: float = 0.5,
        **kw: Any,
    ) -> None:
        super().__init__(num_clients, seed, label_hist, **kw)
        self.medians = np.array([
            _positive("compute_median", compute_median, "seconds per step at batch 1"),
            _positive("up_median", up_median, "Mbit/s"), _positive("down_median", down_median, "Mbit/s"),
            _positive("latency_median", latency_median, "seconds", zero_ok=True),
        ])
        self.sigmas = np.array([
            _positive(k, v, "standard deviation of the log", zero_ok=True)
            for k, v in (("compute_sigma", compute_sigma), ("up_sigma", up_sigma), ("down_sigma", down_sigma),
                         ("latency_sigma", latency_sigma))
        ])

    def _device(self, round: int, client: int) -> Device:
        z = self._stream(client).standard_normal(4)
        return Device(*(float(v) for v in self.medians * np.exp(self.sigmas * z)))


@register_profile("uniform")
class UniformDevices(DeviceProfile):
    """Each field ~ U(min, max), drawn per client (in the order compute, up, down, latency)."""

    def __init__(
        self,
        num_clients: int,
        seed: int,
        label_hist: LabelHist | None = None,
        compute_min: float = 0.001,
        compute_max: float = 0.004,
        up_min: float = 1.0,
        up_max: float = 10.0,
        down_min: float = 5.0,
        down_max: float = 50.0,
        latency_min: float = 0.01,
        latency_max: float = 0.1,
        **kw: Any,
    ) -> None:
        super().__init__(num_clients, seed, label_hist, **kw)
        lo, hi = [], []
        for f, a, b, zero_ok in (("compute", compute_min, compute_max, False), ("up", up_min, up_max, False),
                                 ("down", down_min, down_max, False), ("latency", latency_min, latency_max, True)):
            a = _positive(f"{f}_min", a, "the lower bound", zero_ok=zero_ok)
            b = _positive(f"{f}_max", b, "the upper bound", zero_ok=zero_ok)
            if b < a:
                raise ValueError(f"device_profile.{f}_max={b} must be >= device_profile.{f}_min={a}")
            lo.append(a)
            hi.append(b)
        self.lo, self.hi = np.array(lo), np.array(hi)

    def _device(self, round: int, client: int) -> Device:
        u = self._stream(client).random(4)
        return Device(*(float(v) for v in self.lo + (self.hi - self.lo) * u))


@register_profile("tiers")
class Tiers(DeviceProfile):
    """Device classes: client n is class k with probability ``shares[k]`` (one uniform draw per client,
    compared with the cumulative shares); class k's device is (``compute_s_per_step[k]``,
    ``up_mbps[k]``, ``down_mbps[k]``, ``latency_s[k]``)."""

    def __init__(
        self,
        num_clients: int,
        seed: int,
        label_hist: LabelHist | None = None,
        shares: Sequence[float] = (0.5, 0.3, 0.2),
        compute_s_per_step: Sequence[float] = (0.001, 0.003, 0.01),
        up_mbps: Sequence[float] = (20.0, 5.0, 1.0),
        down_mbps: Sequence[float] = (50.0, 20.0, 5.0),
        latency_s: Sequence[float] = (0.02, 0.05, 0.2),
        names: Sequence[str] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(num_clients, seed, label_hist, **kw)
        cols = {"shares": list(shares), "compute_s_per_step": list(compute_s_per_step), "up_mbps": list(up_mbps),
                "down_mbps": list(down_mbps), "latency_s": list(latency_s)}
        k = len(cols["shares"])
        if k < 1:
            raise ValueError("device_profile.shares=[] needs at least one device class")
        for key, v in cols.items():
            if len(v) != k:
                raise ValueError(f"device_profile.{key} has {len(v)} entries; it needs one per class "
                                 f"({k}, as device_profile.shares)")
        s = np.array([float(x) for x in cols["shares"]])
        if not (np.all(np.isfinite(s)) and np.all(s >= 0) and abs(s.sum() - 1.0) < 1e-9):
            raise ValueError(f"device_profile.shares={cols['shares']} must be >= 0 and sum to 1")
        self.names = [str(x) for x in names] if names is not None else [f"tier{i}" for i in range(k)]
        if len(self.names) != k:
            raise ValueError(f"device_profile.names has {len(self.names)} entries; it needs {k}")
        self.classes = [Device(*(float(cols[f][i]) for f in FIELDS)) for i in range(k)]
        for i, d in enumerate(self.classes):
            check_device(d, f"device_profile class {i} ({self.names[i]})")
        self.cum = np.cumsum(s)
        self.cum[-1] = 1.0

    def tier(self, client: int) -> int:
        u = float(self._stream(int(client)).random())
        return min(int(np.searchsorted(self.cum, u, side="right")), len(self.classes) - 1)

    def _device(self, round: int, client: int) -> Device:
        return self.classes[self.tier(client)]


@register_profile("trace")
class TraceDevices(DeviceProfile):
    """Devices read from a CSV file (see the module docstring for the columns); ``#`` starts a comment."""

    def __init__(
        self, num_clients: int, seed: int, label_hist: LabelHist | None = None, path: str | None = None, **kw: Any
    ) -> None:
        super().__init__(num_clients, seed, label_hist, **kw)
        if not path:
            raise ValueError("device_profile.path is required for device_profile=trace (a CSV with the header "
                             "client,compute_s_per_step,up_mbps,down_mbps,latency_s[,round])")
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise ValueError(f"device_profile.path={p} does not exist; give the path of an existing CSV file")
        self.rows: dict[int, tuple[list[int], list[Device]]] = {}
        with open(p, newline="") as f:
            lines = (line for line in f if line.strip() and not line.lstrip().startswith("#"))
            reader = csv.reader(lines)
            header = [c.strip() for c in next(reader, [])]
            allowed = ("client", *FIELDS, "round")
            unknown = [c for c in header if c not in allowed]
            if unknown:
                raise ValueError(f"device_profile.path={p}: unknown column '{unknown[0]}'; the columns are "
                                 f"{', '.join(allowed[:-1])} and optionally round")
            missing = [c for c in allowed[:-1] if c not in header]
            if missing:
                raise ValueError(f"device_profile.path={p}: the header has no column '{missing[0]}' (it needs "
                                 f"{', '.join(allowed[:-1])}, optionally round)")
            col = {c: header.index(c) for c in header}
            by: dict[int, dict[int, Device]] = {}
            for i, row in enumerate(reader, 2):
                where = f"device_profile.path={p} row {i}"
                try:
                    c = int(row[col["client"]])
                    r = int(row[col["round"]]) if "round" in col else 1
                    d = Device(*(float(row[col[k]]) for k in FIELDS))
                except (ValueError, IndexError):
                    raise ValueError(f"{where}: expected an integer client (and round) and four numbers, got "
                                     f"{','.join(row)}") from None
                if not 0 <= c < self.num_clients:
                    raise ValueError(f"{where}: client {c} is outside 0..{self.num_clients - 1}; fix the trace "
                                     "or num_clients")
                if r < 1:
                    raise ValueError(f"{where}: round {r} < 1 (rounds start at 1)")
                check_device(d, where)
                if r in by.setdefault(c, {}):
                    raise ValueError(f"{where}: a second row for client {c}" + (f" in round {r}" if "round" in col
                                                                                else ""))
                by[c][r] = d
        for c in range(self.num_clients):
            if 1 not in by.get(c, {}):
                raise ValueError(f"device_profile.path={p}: client {c} has no row" +
                                 (" for round 1 (every client needs its device from round 1)" if "round" in col
                                  else f" (every client 0..{self.num_clients - 1} needs one)"))
        for c, rounds in by.items():
            rs = sorted(rounds)
            self.rows[c] = (rs, [rounds[r] for r in rs])

    def _device(self, round: int, client: int) -> Device:
        rs, ds = self.rows[client]
        return ds[bisect.bisect_right(rs, round) - 1]

    def change_rounds(self, client: int) -> list[int]:
        return list(self.rows[int(client)][0])

