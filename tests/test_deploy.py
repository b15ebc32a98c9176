"""Real Flower deployment on loopback: one SuperLink + SuperNodes as
separate processes, each with its own FLWR_HOME; runs submitted with
``flwr run`` and judged by ``flwr ls`` status (never by ``flwr run``'s exit
code). No mocks. Every wait has a timeout; every process is stopped by PID
in teardown. Rounds cost ~12-18 s in deployment, so runs are tiny."""
from __future__ import annotations

import csv
import errno
import importlib.util
import json
import os
import signal
import socket
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
    ports = dl.Ports()
    port = ports.take()  # held (bound, not listening): nothing listens there
    t0 = time.time()
    rc, out, err = _launcher(["--superlink", f"127.0.0.1:{port}", "--supernodes", "0", "--startup-timeout", "3",
                              "--workdir", str(tmp_path / "wd")], timeout=60)
    assert rc == 2
    assert "unreachable" in err and str(port) in err
    assert time.time() - t0 < 45
    ports.close()


# --------------------------------------------------------------------------- ports and processes that die on start
def _bound(port: int) -> bool:
    """Whether another socket can bind 127.0.0.1:port right now (no SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            assert e.errno == errno.EADDRINUSE, e
            return True
    return False


def test_reserved_ports_are_held_until_handed_over_and_never_handed_twice():
    """A reserved port cannot be bound by anyone else until it is handed to
    its process (a port found by binding port 0 and closing the socket can be
    taken by the next bind, here or in another process, before the process
    that was meant to get it binds it), and one launcher never hands out the
    same port twice, even after the earlier one was released."""
    ports = dl.Ports()
    try:
        first = ports.take_many(20)
        assert len(set(first)) == 20
        assert all(_bound(p) for p in first)  # held: a second bind fails with EADDRINUSE
        ports.hand_over(first[0])
        assert not _bound(first[0])  # handed over: the process can bind it now
        later = ports.take_many(200)
        assert len(set(later)) == 200 and not set(later) & set(first)
    finally:
        ports.close()
    assert not any(_bound(p) for p in first[1:5])  # close() releases what is still held


def _listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.timeout(150)
def test_supernode_whose_port_is_taken_before_it_binds_is_started_on_another(tmp_path):
    """The race: another process binds the SuperNode's port between the hand-over
    and the node's own bind. The node dies with 'address already in use' and is
    started again on a new reserved port; it is only counted as started once it
    listens itself."""
    c = dl.Cluster(tmp_path / "wd")
    stolen: list[socket.socket] = []
    hand_over = c.ports.hand_over

    def racy_hand_over(port: int) -> None:
        hand_over(port)
        if c.procs and not stolen:  # the first SuperNode's port (the SuperLink is procs[0])
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", port))
            s.listen()
            stolen.append(s)

    c.ports.hand_over = racy_hand_over  # type: ignore[method-assign]
    try:
        c.up(supernodes=1, timeout=60)
        node = c.nodes[0]
        lost = stolen[0].getsockname()[1]
        assert node.alive() and node.port != lost
        assert dl.listening(node.popen.pid, node.port)
        log = node.log.read_text(errors="replace")
        assert log.count("address already in use") == 1  # the first attempt, on the stolen port
    finally:
        c.stop()
        for s in stolen:
            s.close()


@pytest.mark.timeout(150)
def test_a_process_that_dies_on_start_exits_2_at_once(tmp_path):
    """A SuperLink or SuperNode on a port that is in use (given with --port /
    --supernode-ports, so never moved) dies on start: exit 2 within seconds,
    one line naming the process, then its log's tail; no run is submitted."""
    busy = _listener()
    port = busy.getsockname()[1]
    try:
        for args, name in ((["--port", str(port)], "superlink"),
                           (["--supernode-ports", str(port)], "supernode0")):
            t0 = time.time()
            rc, out, err = _launcher([*args, "--supernodes", "1", "--run", TINY, "--out-dir", str(tmp_path / "r"),
                                      "--workdir", str(tmp_path / f"wd_{name}"), "--startup-timeout", "60"],
                                     timeout=120)
            took = time.time() - t0
            assert rc == 2, err[-3000:]
            line = next(x for x in err.splitlines() if x.startswith("error: "))
            assert line.startswith(f"error: {name} (pid ") and "died on start with exit status" in line, line
            assert "address already in use" in line  # the cause, on that line; its log's tail follows
            assert "--- its log" in err and "Traceback" not in line
            assert not [x for x in out.splitlines() if x.startswith("{")]  # no run submitted, no summary
            assert not (tmp_path / "r").exists()
            assert took < 60, took  # at once, not after a run timeout
            print(f"{name} died on start: exit 2 after {took:.1f}s")
    finally:
        busy.close()


def test_node_data_path_replaces_the_shard(tmp_path):
    """``--node-config 'partition-id=0 data-path=/x.npz'``: the node trains on its own file."""
    from types import SimpleNamespace

    import numpy as np

    from fedagg.flower.client_app import _client_data
    from fedagg.flower.instruction import ClientInstruction, ModelSpec, TrainOptions

    cfg = ClientInstruction(data={"num_clients": 1}, model=ModelSpec("mlp", (64,), 10),
                            train=TrainOptions(1, 0, 32, 0.1, 0.0, 0.0, 0.0, "sgd", 1.0, 1), seed=0, device="cpu")
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


# --------------------------------------------------------------------------- faults with real processes
def _rounds(out_dir: Path) -> list[dict]:
    try:
        lines = (out_dir / "rounds.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(x) for x in lines if x.strip()]


def _wait_round(c, out_dir: Path, rnd: int, timeout: float) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = _rounds(out_dir)
        if rows and rows[-1]["round"] >= rnd:
            return rows
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.tail(8)}" for p in c.procs)
    pytest.fail(f"round {rnd} not recorded in {out_dir} within {timeout}s; rounds so far "
                f"{[r['round'] for r in _rounds(out_dir)]}\n{logs}")


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory):
    """An insecure SuperLink and two SuperNodes on 127.0.0.1 (faults need no TLS)."""
    c = dl.Cluster(tmp_path_factory.mktemp("faults"))
    try:
        c.up(supernodes=2, timeout=60)
        yield c
    finally:
        c.stop()


FAULT_RUN = ("dataset=digits model=mlp num_clients=2 rounds=3 partition.alpha=0.5 train.epochs=1 "
             "participation=full checkpoint.every=1 server.round_timeout={timeout}")
ROUND_TIMEOUT = 40.0  # a healthy deployment round takes 12-22 s on an idle 2-core machine; 30 s failed under load 7-11


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("rule, kill_server", [("fedau", True), ("gossip", False)])
def test_supernode_and_serverapp_killed_mid_run(plain_cluster, tmp_path, rule, kill_server):
    """Round 1 done -> SuperNode 1 is SIGKILLed; its round 2 is recorded as
    failed within server.round_timeout. Gossip: the node restarts 5 s later
    (same FLWR_HOME) and rejoins for round 3. FedAU: after round 2 the
    ServerApp is SIGKILLed too, the node restarts, and the run is resubmitted
    with resume=<out dir> on the same SuperLink. The run
    completes and the stateful rule's state matches the recorded
    participation."""
    c, out = plain_cluster, tmp_path / rule
    ov = f"aggregator={rule} " + FAULT_RUN.format(timeout=ROUND_TIMEOUT)
    rid = c.submit(ov, out)
    _wait_round(c, out, 1, timeout=180)
    victim = c.nodes[1]
    c.kill(victim)
    if not kill_server:
        time.sleep(5)  # round 2 has been sent by now (to the dead node for client 1)
        victim = c.restart(victim)  # back within the round: it rejoins for round 3
    rows = _wait_round(c, out, 2, timeout=ROUND_TIMEOUT + 60)
    r2 = rows[1]
    assert r2["replied"] == [0] and "1" in r2["failed"], r2  # the missed round is recorded as failed
    secs = {int(x["round"]): float(x["round_seconds"]) for x in _rows(out)}
    assert secs[2] <= ROUND_TIMEOUT + 10, secs  # bounded by server.round_timeout
    if kill_server:
        _kill_serverapp_and_resume(c, rid, ov, out, victim)
    else:
        assert c.wait_run(rid, timeout=200, out_dir=out) == "finished:completed", c.run_log(rid)
    rows = _rounds(out)
    assert [r["round"] for r in rows] == [1, 2, 3]  # each round once, none lost or repeated
    assert rows[-1]["replied"] == [0, 1], rows[-1]  # the restarted node rejoined
    st = json.loads((out / "status.json").read_text())
    assert st["status"] == "completed" and st["rounds"] == 3

    import pickle

    import numpy as np
    import torch

    with open(out / "checkpoint.pkl", "rb") as f:
        ck = pickle.load(f)
    assert ck["round"] == 3
    state = ck["aggregator"]
    if rule == "fedau":
        # FedAU's interval estimator is exactly the replay of who replied in each round
        from fedagg.aggregators.fedau import IntervalEstimator

        est = IntervalEstimator(2)
        for r in rows:
            est.update(np.isin(np.arange(2), r["replied"]))
        for key in ("M", "S", "omega"):
            np.testing.assert_array_equal(state["estimator"][key], est.state_dict()[key], err_msg=key)
        assert state["estimator"]["M"].tolist() == [3, 2]  # client 1's missed round is in the state
    else:
        # gossip: one finite model per node; the saved global model is their mean
        nodes = state["nodes"]
        assert sorted(nodes) == [0, 1]
        sd = torch.load(out / "model.pt")
        for name, v in sd.items():
            per_node = [np.asarray(nodes[i][name], dtype=np.float64) for i in (0, 1)]
            assert all(np.isfinite(p).all() for p in per_node)
            if v.dtype.is_floating_point:
                np.testing.assert_allclose(v.numpy(), np.mean(per_node, axis=0), rtol=1e-6, atol=1e-7)
        assert all(np.isfinite(float(r["consensus_distance"])) for r in _rows(out))


def _kill_serverapp_and_resume(c, rid: int, ov: str, out: Path, victim) -> None:
    """SIGKILL the ServerApp, stop its run, bring the node back, resubmit with resume=."""
    pids = c.serverapp_pids()
    assert pids, "no flwr-serverapp process found under the SuperLink:\n" + subprocess.run(
        ["ps", "-eo", "pid,ppid,pgid,args"], capture_output=True, text=True).stdout[-4000:]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    c.stop_run(rid)
    done = json.loads((out / "status.json").read_text())
    assert done["status"] == "running"  # killed: it never got to say otherwise
    c.restart(victim)
    res = c.run(f"{ov} resume={out}", out, timeout=300)
    assert res.ok, f"{res.status}\n{res.error}"


# --------------------------------------------------------------------------- asynchronous modes on real time
# The slowed node's extra seconds per job: more than the jitter of the nodes' first arrivals (up to ~3 s here), so its
# job misses the first buffer; less than twice a job's time on a SuperNode (6-10 s here), so it arrives before the
# third update's buffer is full (with 10 s and 2 updates the fast nodes could fill both first: CI saw it once).
SLOW_S = 6.0
ASYNC_RUN = ("aggregator=fedavg dataset=digits model=mlp num_clients=3 rounds=3 partition.alpha=0.5 train.epochs=1 "
             "participation=full server.mode=fedbuff server.concurrency=3 server.buffer_size=2 "
             "server.round_timeout=90")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fedbuff_on_real_time_with_a_slowed_supernode(tmp_path):
    """fedbuff (K=2) on a real SuperLink with 3 SuperNodes, node 2 slowed by ``slowdown-s``: the server
    keeps 3 jobs in flight (push_messages / pull_messages) and steps on every 2 arrivals in real arrival
    order. The two fast nodes fill the first buffer with fresh updates; the slowed node's job, sent the
    initial model, arrives after that step and is applied stale; the model learns."""
    import numpy as np

    from fedagg.deploy_app import compose_config
    from fedagg.experiment import build
    from fedagg.task.train import evaluate, set_params

    c, out = dl.Cluster(tmp_path / "wd"), tmp_path / "fedbuff"
    t0 = time.time()
    try:
        c.up(supernodes=3, timeout=60, slowdown={2: SLOW_S})
        res = c.run(ASYNC_RUN, out, timeout=240)
    finally:
        c.stop()
    took = time.time() - t0
    assert res.ok, f"{res.status}\n{res.error}"
    rows, recs = _rows(out), _rounds(out)
    assert [int(r["model_version"]) for r in rows] == [1, 2, 3]  # one row per server update, version +1 each
    applied = [(a["client"], a["staleness"], a["version"]) for r in recs for a in r["async"]["applied"]]
    assert [len(r["async"]["applied"]) for r in recs] == [2, 2, 2]  # every update applied its buffer of 2
    assert all(not r["failed"] and not r["rejected"] for r in recs), recs
    slow = [tau for cid, tau, _ in applied if cid == 2]
    fast = [tau for cid, tau, _ in applied if cid != 2]
    assert slow and min(slow) >= 1, applied  # the slowed node's update is applied after a step: stale
    assert float(np.median(fast)) == 0.0, applied  # the fast nodes' updates are (mostly) fresh
    for r, rec in zip(rows, recs):
        taus = [a["staleness"] for a in rec["async"]["applied"]]
        assert float(r["staleness_max"]) == max(taus) and float(r["staleness_mean"]) == pytest.approx(np.mean(taus))
        for a in rec["async"]["applied"]:  # the staleness is the updates since its model was sent
            assert a["staleness"] == rec["round"] - 1 - a["version"]
            assert a["arrival_s"] > a["dispatch_s"] >= 0
    times = [float(r["sim_time_s"]) for r in rows]  # real seconds since the first dispatch
    assert 0 < times[0] < times[1] < times[2]
    slow_job = next(a for rec in recs for a in rec["async"]["applied"] if a["client"] == 2)
    assert slow_job["arrival_s"] - slow_job["dispatch_s"] >= SLOW_S  # it did sleep
    # the final model beats the initial one (the same seed gives the ServerApp's initial model)
    exp = build(compose_config(ASYNC_RUN), deployment=True)
    model = exp.model()
    set_params(model, exp.init_params(0))
    _, acc0 = evaluate(model, exp.x_test, exp.y_test)
    final = float(rows[-1]["test_accuracy"])
    assert np.isfinite(final) and final > acc0, (acc0, final)
    print(f"fedbuff on real time: staleness {applied}, accuracy {acc0:.3f} -> {final:.3f}, "
          f"updates at {times} s, test wall {took:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_past_the_round_timeout_fails_and_its_node_is_sent_again(tmp_path):
    """fedasync on a real SuperLink, node 2 slowed far past ``server.round_timeout``: its job is failed at the
    timeout with the reason (its late reply is never applied), the updates go on with the other nodes, and the
    node, idle again, is sent the current model once more."""
    # a job on a SuperNode takes 6-10 s here (the first more), so 8 updates outlast a 20 s timeout
    timeout_s, rounds = 20.0, 8
    run = (f"aggregator=fedavg dataset=digits model=mlp num_clients=3 rounds={rounds} partition.alpha=0.5 train.epochs=1 "
           "participation=full server.mode=fedasync server.concurrency=3 "
           f"server.round_timeout={timeout_s}")
    c, out = dl.Cluster(tmp_path / "wd"), tmp_path / "fedasync"
    try:  # node 2 would take two minutes a job
        c.up(supernodes=3, timeout=60, slowdown={2: 120.0})
        res = c.run(run, out, timeout=240)
    finally:
        c.stop()
    assert res.ok, f"{res.status}\n{res.error}"
    recs = _rounds(out)
    assert [r["round"] for r in recs] == list(range(1, rounds + 1))
    timed_out = [r for r in recs if "2" in r["failed"] or 2 in r["failed"]]
    assert timed_out, [r["failed"] for r in recs]
    reason = next(iter(timed_out[0]["failed"].values()))
    assert f"server.round_timeout={timeout_s}" in reason, reason
    assert timed_out[0]["async"]["time_s"] >= timeout_s
    applied = [a["client"] for r in recs for a in r["async"]["applied"]]
    # every update applies one job or fails one at the timeout (on a slow machine a fast node's first job, which
    # starts its ClientApp process, can pass 20 s too); node 2's never arrives in time
    failed = [r["failed"] for r in recs if r["failed"]]
    assert all(len(f) == 1 and "server.round_timeout" in next(iter(f.values())) for f in failed), failed
    assert 2 not in applied and len(applied) == rounds - len(failed), (applied, failed)
    sent_to_2 = [d for r in recs for d in r["async"]["dispatched"] if d["client"] == 2]
    assert len(sent_to_2) >= 2, sent_to_2  # sent again after its timeout
    assert sent_to_2[1]["dispatch_s"] >= timeout_s
