"""runtime=ray: the actor-pool Grid gives the in-process results, bitwise
independent of the worker count, survives a killed worker, runs on a
(simulated) two-node cluster and fails fast on an unreachable address."""
from __future__ import annotations

import os
import signal
import tempfile
import time

import numpy as np
import pytest
import torch
from fedagg_testing import SMALL, compose, silent_peer

ray = pytest.importorskip("ray")

from fedagg.errors import ConfigError  # noqa: E402
from fedagg.experiment import run  # noqa: E402
from fedagg.runtime import ray_grid  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _ray_tmp():
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fedagg_ray", dir="/tmp")
    ray_grid.shutdown()
    yield
    ray_grid.shutdown()
    ray_grid.HOOKS.clear()
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old


def _params(d):
    return torch.load(d / "model.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """inprocess, ray with 2 workers and ray with 1 worker, same seed."""
    base = tmp_path_factory.mktemp("ray_runs")
    out = {}
    out["inprocess"] = run(compose(*SMALL, "runtime=inprocess"), base / "inprocess")
    # vectorised cohorts of 2 clients: 3 chunks spread over the workers
    out["ray2"] = run(compose(*SMALL, "runtime=ray", "runtime.num_workers=2", "runtime.batch_size=2",
                              "runtime.cohort_chunk=2"), base / "ray2")
    out["ray1"] = run(compose(*SMALL, "runtime=ray", "runtime.num_workers=1", "runtime.batch_size=auto",
                              "runtime.cohort_chunk=2"), base / "ray1")
    # the per-client path on the actor pool
    out["ray2_plain"] = run(compose(*SMALL, "runtime=ray", "runtime.num_workers=2", "runtime.vectorize=false"),
                            base / "ray2_plain")
    return base, out


@pytest.mark.slow
def test_ray_matches_inprocess(runs):
    base, rows = runs
    pa, pb = _params(base / "inprocess"), _params(base / "ray2")
    diff = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
    assert diff <= 1e-5, diff
    assert [r["clients_replied"] for r in rows["inprocess"]] == [r["clients_replied"] for r in rows["ray2"]]


@pytest.mark.slow
def test_ray_vectorised_matches_per_client(runs):
    base, rows = runs
    pa, pb = _params(base / "ray2_plain"), _params(base / "ray2")
    diff = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
    assert diff <= 1e-5, diff
    assert [r["train_loss"] for r in rows["ray2"]] == pytest.approx([r["train_loss"] for r in rows["ray2_plain"]],
                                                                    abs=1e-5)


@pytest.mark.slow
def test_ray_worker_count_does_not_change_results(runs):
    base, _ = runs
    p1, p2 = _params(base / "ray1"), _params(base / "ray2")
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


@pytest.mark.slow
def test_large_arrays_cross_ray_out_of_band_and_decode_to_the_values_sent(runs):
    """Under array_transport (the driver during a run; fedagg's actors for life) an Array of 1 MiB or more
    comes back from Ray's object store as a read-only view of it (no copy), a small one as bytes; both decode,
    by fedagg's codec and by Flower's Array.numpy, to the values sent. Outside it Arrays pickle as Python would."""
    from flwr.app import Message, RecordDict

    from fedagg.flower.codec import params_to_record, record_to_params
    from fedagg.runtime.inprocess import set_task_identity

    set_task_identity()
    sent = {"big": np.arange(300_000, dtype=np.float32).reshape(300, 1000), "small": np.arange(6, dtype=np.int64)}

    def roundtrip():
        content = RecordDict()
        content["arrays"] = params_to_record(sent)
        return ray.get(ray.put(Message(content, dst_node_id=1, message_type="train"))).content["arrays"]

    with ray_grid.array_transport():
        oob = roundtrip()
    plain = roundtrip()
    assert isinstance(oob["big"].data, memoryview) and oob["big"].data.readonly
    assert isinstance(oob["small"].data, bytes) and isinstance(plain["big"].data, bytes)
    for rec in (oob, plain):
        back = record_to_params(rec)
        for k, v in sent.items():
            assert back[k].dtype == v.dtype and back[k].flags.writeable
            np.testing.assert_array_equal(back[k], v)
            np.testing.assert_array_equal(rec[k].numpy(), v)


@pytest.mark.slow
def test_a_small_round_of_clients_trained_one_by_one_reaches_both_workers_bitwise(tmp_path):
    """The 2-D CNN trains client by client inside a chunk (vectorize=auto on CPU): 3 clients are dealt over
    both workers (one chunk each), and every number is the per-client run's."""
    actors: list[set[int]] = []

    def seen(grid, n):
        actors.append({a for a, _, _, cohort in grid._pending.values() if cohort})

    common = ("dataset=mnist_5k", "model=cnn", "num_clients=3", "rounds=2", "train.steps=3", "runtime=ray",
              "runtime.num_workers=2")
    ray_grid.HOOKS["after_push"] = seen
    try:
        rows = run(compose(*common, "runtime.vectorize=auto"), tmp_path / "auto")
    finally:
        ray_grid.HOOKS.clear()
    assert actors and all(a == {0, 1} for a in actors if a), actors  # every training push used both workers
    plain = run(compose(*common, "runtime.vectorize=false"), tmp_path / "plain")
    pa, pb = _params(tmp_path / "auto"), _params(tmp_path / "plain")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in plain]


@pytest.mark.slow
def test_killed_worker_is_retried_and_run_continues(runs, tmp_path):
    base, _ = runs
    killed = []

    def kill_first_worker(grid, n):
        if n == 3 and not killed:  # push 1 = id query, 2 = round 1, 3 = round 2 (calls in flight)
            pid = grid.pool.info[0]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    ray_grid.HOOKS["after_push"] = kill_first_worker
    try:
        rows = run(compose(*SMALL, "runtime=ray", "runtime.num_workers=2", "runtime.batch_size=2",
                           "runtime.cohort_chunk=2"), tmp_path)
    finally:
        ray_grid.HOOKS.clear()
    assert killed
    assert len(rows) == 3
    assert all(r["clients_replied"] == 6 for r in rows)  # the lost messages were resent and answered
    pk, p2 = _params(tmp_path), _params(base / "ray2")
    assert all(torch.equal(pk[k], p2[k]) for k in pk)  # a retry computes exactly the same update
    # the killed actor was restarted by Ray and serves its nodes again
    pids = ray_grid.wait_ready(ray_grid._POOL.actors, 120)
    assert killed[0] not in [p["pid"] for p in pids]


def test_local_ray_listens_and_talks_on_loopback_only(monkeypatch, tmp_path):
    """Ray maps 127.0.0.1 to the host's network address unless its single-machine
    mode is on; fedagg turns it on while it starts its own Ray, even in a process
    that imported Ray without it (this suite's conftest sets it for everything
    else), and leaves the process as it found it."""
    import subprocess

    import ray
    from ray._private import ray_constants

    ray_grid.shutdown()
    monkeypatch.delenv(ray_grid.LOOPBACK_ENV, raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # as on any Linux host without the variable
    rows = run(compose(*SMALL, "runtime=ray", "rounds=1"), tmp_path)
    try:
        node = ray._private.worker._global_node  # noqa: SLF001
        assert node.node_ip_address == "127.0.0.1" and node.gcs_address.startswith("127.0.0.1:")
        assert ray_constants.ENABLE_RAY_CLUSTER is True and ray_grid.LOOPBACK_ENV not in os.environ
        pids = {str(os.getpid()), *subprocess.run(["pgrep", "-f", node.session_name], capture_output=True,
                                                  text=True).stdout.split()}
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines()
        ours = [line.split()[3] for line in listening if any(f"pid={p}," in line for p in pids)]
        assert ours and all(_on_loopback(a) for a in ours), ours  # GCS, raylet, workers: loopback only
    finally:
        ray_grid.shutdown()
    assert rows and rows[-1]["clients_replied"] == 6


def _on_loopback(local_address: str) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(local_address.rsplit(":", 1)[0].strip("[]"))
    except ValueError:  # "*": every interface
        return False
    return bool((getattr(ip, "ipv4_mapped", None) or ip).is_loopback)


def test_is_loopback():
    assert ray_grid.is_loopback(None) and ray_grid.is_loopback("127.0.0.1:6379")
    assert ray_grid.is_loopback("ray://localhost:10001") and ray_grid.is_loopback("[::1]:6379")
    assert not ray_grid.is_loopback("auto") and not ray_grid.is_loopback("head.example.org:6379")


def test_unreachable_address_fails_fast_naming_the_key(tmp_path):
    ray_grid.shutdown()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="runtime.address"):
        run(compose(*SMALL, "runtime=ray", "runtime.address=127.0.0.1:1", "runtime.connect_timeout=2"), tmp_path)
    with silent_peer() as address, pytest.raises(ConfigError, match="runtime.address") as e:
        t1 = time.perf_counter()  # a peer that never answers (as a black-holed host): the short timeout
        run(compose(*SMALL, "runtime=ray", f"runtime.address={address}", "runtime.connect_timeout=1"),
            tmp_path / "b")
    assert "TimeoutError" in str(e.value)  # it waited for the timeout: neither connected nor refused
    assert 0.9 < time.perf_counter() - t1 < 10
    assert time.perf_counter() - t0 < 30
    assert not ray.is_initialized()
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.slow
def test_two_node_cluster_via_address(runs, tmp_path):
    from ray.cluster_utils import Cluster

    base, _ = runs
    ray_grid.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        result_rows = run(compose(*SMALL, "runtime=ray", f"runtime.address={cluster.address}"), tmp_path)
        assert len(result_rows) == 3
        nodes = {i["node_id"] for i in ray_grid._POOL.info}
        assert len(ray_grid._POOL.actors) == 2 and len(nodes) == 2  # one worker on each Ray node
        pc, p2 = _params(tmp_path), _params(base / "ray2")
        assert all(torch.equal(pc[k], p2[k]) for k in pc)
        assert not ray_grid._STARTED_RAY  # connected, not started: fedagg must not stop this cluster
    finally:
        ray_grid.shutdown()  # disconnects this driver only
        cluster.shutdown()
