"""Real Flower deployment on loopback (issue 7): one SuperLink + SuperNodes as
separate processes, each with its own FLWR_HOME; runs submitted with
``flwr run`` and judged by ``flwr ls`` status (never by ``flwr run``'s exit
code). No mocks. Every wait has a timeout; every process is stopped by PID
in teardown. Rounds cost ~12-18 s in deployment, so runs are tiny."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "deploy_local.py"
TINY = "dataset=digits model=mlp num_clients=2 rounds=2 partition.alpha=0.5 train.epochs=1"


def _load_launcher():
    spec = importlib.util.spec_from_file_location("fedagg_deploy_local", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


dl = _load_launcher()


@pytest.fixture(autouse=True)
def _flwr_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")


def _launcher(args: list[str], timeout: float) -> tuple[int, str, str]:
    """Run the launcher CLI; on timeout SIGTERM it (it stops its own processes), then SIGKILL."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    p = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=ROOT)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        pytest.fail(f"launcher timed out after {timeout}s:\n{err[-3000:]}")
    return p.returncode, out, err


def _rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """TLS + SuperNode authentication: a SuperLink and two registered SuperNodes."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    c = dl.Cluster(tmp_path_factory.mktemp("deploy"), tls=True, auth=True)
    try:
        c.up(supernodes=2, timeout=60)
        yield c
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unregistered_supernode_is_refused(cluster):
    key, _ = dl.make_keypair(cluster.workdir / "keys" / "intruder", comment="intruder")
    p = cluster.start_supernode("intruder", "partition-id=1 num-partitions=2", key=key, register=False)
    try:
        p.popen.wait(timeout=90)  # refused: the SuperNode gives up and exits
    except subprocess.TimeoutExpired:
        pytest.fail(f"the unregistered SuperNode is still running:\n{p.tail()}")
    finally:
        cluster.nodes.remove(p)
    assert p.popen.returncode != 0
    assert "could not establish a connection" in p.log.read_text(errors="replace")
    nodes = cluster.cli_json("supernode", "ls", "fedagg")
    assert nodes.get("success"), nodes
    assert len(nodes["nodes"]) == 2  # only the two registered nodes
    assert "No SuperNode found with the given public key" in (cluster.workdir / "logs" / "superlink.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_feddisco_and_fedau_complete_over_tls(cluster, tmp_path):
    results = {}
    for name, ov in {"feddisco": "aggregator=feddisco", "fedau": "aggregator=fedau participation=full"}.items():
        t0 = time.time()
        res = cluster.run(f"{ov} {TINY}", tmp_path / name, timeout=300)
        results[name] = (res, time.time() - t0)
        assert res.ok, f"{name}: {res.status}\n{res.error}"
        rows = _rows(tmp_path / name)
        assert [int(r["round"]) for r in rows] == [1, 2]
        assert all(int(r["clients_replied"]) == 2 for r in rows), rows
        assert (tmp_path / name / "model.pt").is_file()
        st = json.loads((tmp_path / name / "status.json").read_text())
        assert st["status"] == "completed" and st["rounds"] == 2
        cfg = (tmp_path / name / "config.yaml").read_text()
        assert f"name: {name}" in cfg
    print({k: round(v[1], 1) for k, v in results.items()})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_failed_run_is_reported_as_failed(cluster, tmp_path):
    """The launcher, attached to the running SuperLink (--superlink, as from
    another machine), exits non-zero for a run whose ServerApp fails."""
    rc, out, err = _launcher(
        ["--superlink", cluster.address, "--ca-cert", str(cluster.ca_cert), "--supernodes", "0",
         "--run", "aggregator=nosuch", "--out-dir", str(tmp_path / "bad"), "--workdir", str(tmp_path / "wd"),
         "--run-timeout", "180"], timeout=220)
    assert rc == 1, err[-3000:]
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert lines[0]["status"] == "finished:failed"
    assert lines[-1]["success"] is False
    assert "aggregator/nosuch" in err  # the run's log tail names the cause
    st = json.loads((tmp_path / "bad" / "status.json").read_text())
    assert st["status"] == "failed" and "nosuch" in st["error"]


def test_missing_certificate_is_named(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("x")
    rc, out, err = _launcher(["--tls", "--certs", str(tmp_path / "certs"), "--workdir", str(tmp_path / "wd")], timeout=60)
    assert rc == 2
    assert "--certs" in err and "server.pem" in err
    rc, out, err = _launcher(["--superlink", "127.0.0.1:9", "--tls", "--ca-cert", str(tmp_path / "nope.crt"),
                              "--workdir", str(tmp_path / "wd2")], timeout=60)
    assert rc == 2 and "--ca-cert" in err


def test_unreachable_superlink_fails_clearly(tmp_path):
    port = dl.free_port()  # nothing listens there
    t0 = time.time()
    rc, out, err = _launcher(["--superlink", f"127.0.0.1:{port}", "--supernodes", "0", "--startup-timeout", "3",
                              "--workdir", str(tmp_path / "wd")], timeout=60)
    assert rc == 2
    assert "unreachable" in err and str(port) in err
    assert time.time() - t0 < 45


def test_node_data_path_replaces_the_shard(tmp_path):
    """``--node-config 'partition-id=0 data-path=/x.npz'``: the node trains on its own file."""
    from types import SimpleNamespace

    import numpy as np

    from fedagg.flower.client_app import _client_data

    cfg = {"fedagg.model": json.dumps({"name": "mlp", "input_shape": [64], "num_classes": 10, "options": {}})}
    f = tmp_path / "node.npz"
    np.savez(f, x_train=np.random.rand(30, 8, 8), y_train=np.arange(30) % 10)
    data, k = _client_data(SimpleNamespace(node_config={"partition-id": 0, "data-path": str(f)}), cfg, 0)
    assert k == 10 and data.x_train.shape == (30, 64) and data.x_train.dtype == np.float32
    assert np.bincount(data.y_train, minlength=k).tolist() == [3] * 10
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((3, 64)), y_train=np.array([0, 1, 12]))
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        _client_data(SimpleNamespace(node_config={"data-path": str(tmp_path / "bad.npz")}), cfg, 0)
    with pytest.raises(ValueError, match="does not exist on this SuperNode"):
        _client_data(SimpleNamespace(node_config={"data-path": str(tmp_path / "none.npz")}), cfg, 0)
