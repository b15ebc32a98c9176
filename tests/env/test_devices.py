"""Device profiles: draws pure in (seed, client), the documented distributions, O(asked) cost, the data
correlation, and traces refused in one line naming the key."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedagg.config import CONF_DIR
from fedagg.env.devices import Device, available, build_device_profile, check_device


def test_registry_lists_the_five_profiles():
    assert set(available()) == {"none", "lognormal", "tiers", "uniform", "trace"}
    assert not build_device_profile("none", 3, 0).enabled
    with pytest.raises(ValueError, match="device_profile.name"):
        build_device_profile("quantum", 3, 0)


@pytest.mark.parametrize("name", ["lognormal", "uniform", "tiers"])
def test_a_clients_device_depends_only_on_seed_and_client(name):
    a = build_device_profile(name, 1000, 7)
    b = build_device_profile(name, 50, 7)  # another population size: client 3 is the same device
    first = [a.device(1, c) for c in range(50)]
    assert first == [b.device(9, c) for c in range(50)] == [a.device(5, c) for c in range(50)]
    assert len(set(first)) > 1  # clients differ, so the equality above could fail
    assert first != [build_device_profile(name, 1000, 8).device(1, c) for c in range(50)]


def test_lognormal_has_the_documented_medians_and_spread():
    p = build_device_profile("lognormal", 20_000, 0)
    d = np.array([[*p.device(1, c).as_dict().values()] for c in range(20_000)])
    assert np.allclose(np.median(d, 0), [0.002, 5.0, 20.0, 0.05], rtol=0.03)
    assert np.allclose(np.log(d).std(0), 0.5, rtol=0.03)
    assert abs(np.corrcoef(np.log(d[:, 0]), np.log(d[:, 1]))[0, 1]) < 0.03  # fields drawn independently


def test_uniform_stays_in_its_bounds_and_fills_them():
    p = build_device_profile("uniform", 5000, 1, compute_min=0.01, compute_max=0.03)
    c = np.array([p.device(1, n).compute_s_per_step for n in range(5000)])
    assert c.min() >= 0.01 and c.max() <= 0.03 and abs(c.mean() - 0.02) < 3e-4


def test_tiers_follow_their_shares_and_fix_all_four_fields():
    p = build_device_profile("tiers", 10_000, 2, shares=[0.7, 0.3], compute_s_per_step=[0.001, 0.01],
                             up_mbps=[10.0, 1.0], down_mbps=[50.0, 5.0], latency_s=[0.01, 0.3])
    ds = [p.device(1, n) for n in range(10_000)]
    slow = [d for d in ds if d.compute_s_per_step == 0.01]
    assert abs(len(slow) / len(ds) - 0.3) < 0.015
    assert set(slow) == {Device(0.01, 1.0, 5.0, 0.3)}
    assert set(ds) == {Device(0.001, 10.0, 50.0, 0.01), Device(0.01, 1.0, 5.0, 0.3)}


def test_a_million_clients_cost_only_the_asked_ones():
    t0 = time.perf_counter()
    p = build_device_profile("lognormal", 1_000_000, 0)
    ds = [p.device(1, c) for c in range(999_980, 1_000_000)]
    assert time.perf_counter() - t0 < 1.0  # nothing per registered client (a loose bound)
    assert len(set(ds)) == 20


def test_slow_labels_slow_exactly_the_clients_that_hold_them():
    hists = {0: np.array([10, 0, 0]), 1: np.array([0, 10, 0]), 2: np.array([5, 5, 0])}
    base = build_device_profile("tiers", 3, 0, shares=[1.0], compute_s_per_step=[0.01], up_mbps=[1.0],
                                down_mbps=[1.0], latency_s=[0.0])
    p = build_device_profile("tiers", 3, 0, hists.__getitem__, shares=[1.0], compute_s_per_step=[0.01],
                             up_mbps=[1.0], down_mbps=[1.0], latency_s=[0.0], slow_labels=[1], slow_factor=5.0)
    c = [p.device(1, n).compute_s_per_step / base.device(1, n).compute_s_per_step for n in range(3)]
    assert c == pytest.approx([1.0, 5.0, 3.0])  # 1 + (5 - 1) * share of label 1: 0, 1, 1/2
    assert p.device(1, 1).up_mbps == 1.0  # links are not slowed
    with pytest.raises(ValueError, match=r"device_profile.slow_labels=\[1\]: class 1 is outside 0..0"):
        p.check_labels(1)


def write(tmp_path, text):
    path = tmp_path / "devices.csv"
    path.write_text(text)
    return str(path)


HEADER = "client,compute_s_per_step,up_mbps,down_mbps,latency_s"


def test_trace_rows_and_rounds(tmp_path):
    path = write(tmp_path, "# a comment\nround," + HEADER + "\n1,0,0.01,2,8,0.1\n1,1,0.02,4,16,0\n"
                 "3,0,inf,2,8,0.1\n5,0,0.005,2,8,0.1\n")
    p = build_device_profile("trace", 2, 0, path=path)
    assert p.device(1, 0) == p.device(2, 0) == Device(0.01, 2.0, 8.0, 0.1)
    assert not p.device(3, 0).online and not p.device(4, 0).online  # off from round 3 ...
    assert p.device(5, 0) == p.device(99, 0) == Device(0.005, 2.0, 8.0, 0.1)  # ... back from round 5 on
    assert p.device(7, 1) == Device(0.02, 4.0, 16.0, 0.0)
    plain = build_device_profile("trace", 2, 0, path=write(tmp_path, HEADER + "\n1,0.02,4,16,0\n0,0.01,2,8,0.1\n"))
    assert plain.device(4, 0) == Device(0.01, 2.0, 8.0, 0.1)


@pytest.mark.parametrize("text, words", [
    (HEADER + "\n0,-0.01,2,8,0.1\n1,0.01,2,8,0.1\n", ["row 2", "compute_s_per_step=-0.01", "> 0"]),
    (HEADER + "\n0,0.01,0,8,0.1\n1,0.01,2,8,0.1\n", ["row 2", "up_mbps=0.0", "> 0"]),
    (HEADER + "\n0,0.01,2,8,-1\n1,0.01,2,8,0.1\n", ["latency_s=-1.0", ">= 0"]),
    (HEADER + "\n0,0.01,2,8,0.1\n", ["client 1 has no row"]),
    ("round," + HEADER + "\n1,0,0.01,2,8,0.1\n2,1,0.01,2,8,0.1\n", ["client 1 has no row for round 1"]),
    (HEADER + ",battery\n0,0.01,2,8,0.1,3\n1,0.01,2,8,0.1,3\n", ["unknown column 'battery'"]),
    ("client,up_mbps,down_mbps,latency_s\n0,2,8,0.1\n1,2,8,0.1\n", ["no column 'compute_s_per_step'"]),
    (HEADER + "\n0,0.01,2,8,0.1\n1,fast,2,8,0.1\n", ["row 3", "expected an integer client"]),
    (HEADER + "\n0,0.01,2,8,0.1\n7,0.01,2,8,0.1\n", ["client 7 is outside 0..1"]),
    (HEADER + "\n0,0.01,2,8,0.1\n0,0.01,2,8,0.1\n", ["a second row for client 0"]),
])
def test_bad_traces_are_refused_naming_the_key(tmp_path, text, words):
    with pytest.raises(ValueError) as e:
        build_device_profile("trace", 2, 0, path=write(tmp_path, text))
    msg = str(e.value)
    assert msg.startswith("device_profile.path=") and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("name, opts, words", [
    ("trace", {"path": "/no/such/devices.csv"}, ["device_profile.path=/no/such/devices.csv does not exist"]),
    ("trace", {}, ["device_profile.path is required"]),
    ("lognormal", {"compute_median": -1.0}, ["device_profile.compute_median=-1.0 must be > 0"]),
    ("uniform", {"up_min": 5.0, "up_max": 1.0}, ["device_profile.up_max=1.0 must be >= device_profile.up_min=5.0"]),
    ("tiers", {"shares": [0.5, 0.3, 0.1]}, ["device_profile.shares=[0.5, 0.3, 0.1] must be >= 0 and sum to 1"]),
    ("tiers", {"shares": [1.0]}, ["device_profile.compute_s_per_step has 3 entries; it needs one per class (1"]),
    ("tiers", {"shares": [1.0], "compute_s_per_step": [-2.0], "up_mbps": [1.0], "down_mbps": [1.0],
               "latency_s": [0.0]}, ["class 0 (tier0): compute_s_per_step=-2.0 must be > 0"]),
    ("lognormal", {"slow_factor": 0.0}, ["device_profile.slow_factor=0.0 must be > 0"]),
])
def test_bad_profile_options_are_refused_naming_the_key(name, opts, words):
    with pytest.raises(ValueError) as e:
        build_device_profile(name, 4, 0, **opts)
    for w in words:
        assert w in str(e.value), (w, str(e.value))



@pytest.mark.parametrize("path", sorted((Path(CONF_DIR) / "device_profile").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_conf_file_builds(path, tmp_path):
    d = yaml.safe_load(path.read_text())
    opts = {k: v for k, v in d.items() if k != "name"}
    if d["name"] == "trace":
        opts["path"] = write(tmp_path, HEADER + "\n" + "".join(f"{c},0.01,2,8,0.1\n" for c in range(10)))
    p = build_device_profile(d["name"], 10, 0, **opts)
    assert p.enabled == (d["name"] != "none")
    if p.enabled:
        check_device(p.device(1, 9), str(path))
