#!/usr/bin/env python
"""Run fedagg on a real Flower deployment: one SuperLink + N SuperNodes on
loopback (each with its own FLWR_HOME, as if on separate machines), submit
one or more runs with ``flwr run``, wait for each to finish, stop everything.

    .venv/bin/python scripts/deploy_local.py --supernodes 2 \\
        --run "aggregator=feddisco dataset=digits model=mlp num_clients=2 rounds=2" \\
        --out-dir deploy-results [--tls [--certs DIR]] [--auth]

- ``--tls``: HTTPS with a CA + server cert (``--certs DIR`` holding ca.crt,
  server.pem, server.key; generated with scripts/make_certs.sh if omitted).
- ``--auth`` (implies ``--tls``): SuperNode authentication. Every SuperNode
  gets an ECDSA P-384 key pair; its public key is registered with
  ``flwr supernode register`` before the node starts with
  ``--auth-supernode-private-key``. Unregistered nodes are refused.
- ``--slowdown I=SECONDS``: SuperNode I's ClientApp sleeps SECONDS before each
  train reply (node config ``slowdown-s``): a deliberately slow node, for
  tests and benchmarks of the asynchronous modes (``server.mode=fedasync``,
  which run on real time in a deployment).
- ``--superlink HOST:PORT``: use a SuperLink that is already running (for
  example on another machine) instead of starting one; with TLS pass its CA
  via ``--ca-cert``.
- Each ``--run`` is one ``flwr run`` on the same SuperLink (one run: results
  in --out-dir; several: in --out-dir/run<k>). ``flwr run`` exits 0 even
  when a run fails, so the status is polled with ``flwr ls --run-id`` until
  ``finished:*``.

Ports: every process started here binds 127.0.0.1. The launcher reserves
each port by binding it and holding the socket until the process that will
use it starts (so no other bind, here or elsewhere, gets it in between), never
hands the same port out twice, and starts a process again on another port if
its port was still taken when it bound it (``address already in use``). A
process counts as started once it listens on its port.

Exit status: 0 only when every run finished ``finished:completed``; 1 when a
run failed, was stopped or timed out; 2 at once for setup errors (missing
certificate, SuperLink unreachable, a SuperLink or SuperNode that died on
start or before a run was submitted: one line naming it, then its log's
tail). One JSON line per run and a summary go to stdout; process logs stay
in --workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin (flower-superlink, flwr, ...)


class SetupError(RuntimeError):
    """The deployment could not be brought up (exit status 2)."""


HOST = "127.0.0.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CAUSES = [re.compile(p) for p in (r"\[Errno \d+\]", r"\bERROR\b", r"^\w*(Error|Exception)\b")]  # best first
START_ATTEMPTS = 3  # a process whose reserved port was taken before it bound it is started again on another


class Ports:
    """TCP ports on 127.0.0.1 for the processes one launcher starts.
    ``take()`` binds port 0 and keeps the socket open: while it is held no
    other bind can get the port and the kernel does not give it to an
    outgoing connection. ``hand_over(port)`` closes it just before the
    process that binds it starts. No port is handed out twice."""

    def __init__(self) -> None:
        self._held: dict[int, socket.socket] = {}
        self._given: set[int] = set()

    def take(self) -> int:
        spare: list[socket.socket] = []  # ports handed out before and bound again: kept bound while looking
        try:
            for _ in range(1000):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((HOST, 0))
                port = int(s.getsockname()[1])
                if port not in self._given:
                    self._given.add(port)
                    self._held[port] = s
                    return port
                spare.append(s)
        finally:
            for x in spare:
                x.close()
        raise SetupError("no free TCP port on 127.0.0.1")

    def take_many(self, n: int) -> list[int]:
        return [self.take() for _ in range(n)]

    def hand_over(self, port: int) -> None:
        """Free ``port`` for the process about to bind it (no-op for a port not held here)."""
        s = self._held.pop(port, None)
        if s is not None:
            s.close()

    def close(self) -> None:
        for port in list(self._held):
            self.hand_over(port)


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself has a TCP socket listening on ``port``
    (Linux /proc; elsewhere: whether anything accepts connections there)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            return False
    inodes = set()
    for t in tables:
        try:
            rows = t.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _log(msg: str) -> None:
    print(f"[deploy] {msg}", file=sys.stderr, flush=True)


def base_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # flower-superexec / flwr-serverapp / flwr-clientapp
        PYTHONUNBUFFERED="1",
    )
    return env


def make_keypair(path: Path, comment: str = "fedagg-supernode") -> tuple[Path, Path]:
    """ECDSA P-384 key pair in OpenSSH format (what ``ssh-keygen -t ecdsa -b
    384 -N '' -f PATH`` writes): PATH (private) and PATH.pub (public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                    + f" {comment}\n".encode())
    return path, pub


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    cmd: list[str] = field(default_factory=list)
    home: Path | None = None
    port: int | None = None  # the port it binds on 127.0.0.1
    log_from: int = 0  # where this process's lines start in its (appended-to) log

    def alive(self) -> bool:
        return self.popen.poll() is None

    def own_log(self) -> list[str]:
        """The lines this process wrote (its log may hold an earlier start's), colour codes removed."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_from)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [ANSI.sub("", line) for line in text.splitlines()]

    def port_was_taken(self) -> bool:
        """Its log says it could not bind its port (``[Errno 98] ... address already in use``)."""
        return any("address already in use" in line.lower() for line in self.own_log())

    def died(self, when: str = "on start") -> str:
        """One line naming the process that exited and the first error it logged, then its log's tail."""
        lines = self.own_log()
        cause = next((x.strip() for pat in CAUSES for x in lines if pat.search(x)),
                     lines[-1].strip() if lines else "(empty log)")
        tail = "\n".join(lines[-12:])
        return (f"{self.name} (pid {self.popen.pid}) died {when} with exit status {self.popen.returncode}: "
                f"{cause}\n--- its log {self.log} ends with:\n{tail}")

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class RunResult:
    run_id: int | None
    overrides: str
    out_dir: str
    status: str
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


@dataclass
class Cluster:
    """One SuperLink (started here or given as ``superlink``) + SuperNodes."""

    workdir: Path
    tls: bool = False
    auth: bool = False
    certs: Path | None = None  # dir with ca.crt, server.pem, server.key
    ca_cert: Path | None = None  # for an external SuperLink with TLS
    port: int | None = None
    superlink: str | None = None  # HOST:PORT of an existing SuperLink
    app_dir: Path = REPO
    start_timeout: float = 60.0  # seconds for a started process to listen on its port
    procs: list[Proc] = field(default_factory=list)
    nodes: list[Proc] = field(default_factory=list)
    ports: Ports = field(default_factory=Ports)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if self.auth:
            self.tls = True  # Flower refuses --enable-supernode-auth without TLS
        for tool in ("flower-superlink", "flower-supernode", "flwr", "flower-superexec"):
            if not (BIN / tool).exists():
                raise SetupError(f"{tool} not found in {BIN}; run this script with the project's venv python")
        if self.superlink is None:
            self._fixed_port = self.port is not None  # given by the user: never moved to another port
            self.port = self.port or self.ports.take()
            self.address = f"{HOST}:{self.port}"
        else:
            self.address = self.superlink
        self.cli_home = self.workdir / "home_cli"

    # -- certificates and keys -----------------------------------------------
    def _prepare_certs(self) -> None:
        if not self.tls:
            return
        if self.superlink is not None:
            if self.ca_cert is None:
                raise SetupError("--tls with --superlink needs --ca-cert (the CA that signed the SuperLink's cert)")
            if not Path(self.ca_cert).is_file():
                raise SetupError(f"--ca-cert: file not found: {self.ca_cert}")
            self.ca_cert = Path(self.ca_cert).resolve()
            return
        if self.certs is None:
            self.certs = self.workdir / "certs"
            r = subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(self.certs)],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise SetupError(f"make_certs.sh failed: {r.stderr.strip()}")
        self.certs = Path(self.certs).resolve()
        for f in ("ca.crt", "server.pem", "server.key"):
            if not (self.certs / f).is_file():
                raise SetupError(f"--certs: {self.certs / f} not found (expected ca.crt, server.pem, server.key; "
                                 "make them with scripts/make_certs.sh DIR)")
        self.ca_cert = self.certs / "ca.crt"

    def _write_cli_config(self) -> None:
        self.cli_home.mkdir(parents=True, exist_ok=True)
        lines = ['[superlink]', 'default = "fedagg"', '[superlink.fedagg]', f'address = "{self.address}"']
        lines.append(f'root-certificates = "{self.ca_cert}"' if self.tls else "insecure = true")
        (self.cli_home / "config.toml").write_text("\n".join(lines) + "\n")

    # -- processes -------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], home: Path, log_name: str | None = None,
               port: int | None = None) -> Proc:
        home.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / f"{log_name or name}.log"
        if port is not None:
            self.ports.hand_over(port)  # released at the last moment: the process binds it next
        fh = open(log, "ab")
        log_from = fh.tell()
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=base_env(home), cwd=self.workdir,
                             start_new_session=True)  # own process group: its superexec/app children stop with it
        fh.close()
        proc = Proc(name, p, log, list(cmd), home, port, log_from)
        self.procs.append(proc)
        _log(f"started {name} (pid {p.pid}{f', port {port}' if port else ''}), log {log}")
        return proc

    def _wait_listening(self, proc: Proc, timeout: float) -> bool:
        """True once ``proc`` listens on its port; False when it exited first."""
        assert proc.port is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not proc.alive():
                return False
            if listening(proc.popen.pid, proc.port):
                return True
            time.sleep(0.2)
        raise SetupError(f"{proc.name} (pid {proc.popen.pid}) did not listen on port {proc.port} within "
                         f"{timeout:.0f}s; its log {proc.log} ends with:\n{proc.tail()}")

    def _start_bound(self, name: str, cmd_for: Callable[[int], list[str]], port: int, home: Path,
                     fixed: bool = False) -> Proc:
        """Start a process that binds ``port`` and wait until it listens. If
        the port was taken before it bound it, start it again on a new port
        (not when the port is ``fixed``); any other death is a SetupError."""
        attempt = 1
        while True:
            proc = self._spawn(name, cmd_for(port), home, port=port)
            if self._wait_listening(proc, self.start_timeout):
                return proc
            if fixed or not proc.port_was_taken() or attempt == START_ATTEMPTS:
                raise SetupError(proc.died())
            self.procs.remove(proc)
            new = self.ports.take()
            _log(f"{name}: port {port} was taken before it could bind it; starting it again on port {new}")
            port, attempt = new, attempt + 1

    def start_superlink(self) -> Proc:
        """Start the SuperLink and wait until it listens on its port (moved to
        another one if it was taken, unless the user gave it)."""
        assert self.port is not None
        proc = self._start_bound("superlink", self._superlink_cmd, self.port, self.workdir / "home_superlink",
                                 fixed=self._fixed_port)
        self.port = proc.port
        self.address = f"{HOST}:{self.port}"
        return proc

    def _superlink_cmd(self, port: int) -> list[str]:
        cmd = [str(BIN / "flower-superlink"), "--host", HOST, "--port", str(port),
               "--disable-runtime-dependency-installation"]
        if self.tls:
            assert self.certs is not None
            cmd += ["--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
                    "--ssl-keyfile", str(self.certs / "server.key")]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        return cmd

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the SuperLink's /health endpoint (clear error after ``timeout``)."""
        scheme = "https" if self.tls else "http"
        ctx = ssl.create_default_context(cafile=str(self.ca_cert)) if self.tls else None
        url = f"{scheme}://{self.address}/health"
        deadline, last = time.time() + timeout, ""
        link = next((p for p in self.procs if p.name == "superlink"), None)
        while time.time() < deadline:
            if link is not None and not link.alive():
                raise SetupError(link.died())
            try:
                with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.3)
        raise SetupError(f"SuperLink at {self.address} is unreachable after {timeout:.0f}s ({url}: {last})")

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True, timeout=timeout,
                              env=base_env(self.cli_home), cwd=self.workdir)

    def cli_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        r = self.cli(*args, "--format", "json", timeout=timeout)
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError:
            return {"success": False, "error-message": (r.stdout + r.stderr).strip()[-2000:]}

    def register(self, pubkey: Path, name: str | None = None) -> int:
        args = ["supernode", "register", str(pubkey), "fedagg"] + (["--name", name] if name else [])
        res = self.cli_json(*args)
        if not res.get("success"):
            raise SetupError(f"registering {pubkey} failed: {res.get('error-message')}")
        return int(res["node-id"])

    def start_supernode(self, name: str, node_config: str, key: Path | None = None, register: bool = True,
                        port: int | None = None, fixed_port: bool = False) -> Proc:
        """Start one SuperNode and wait until its Runtime API listens on its
        port (``port``, else one reserved here; a ``fixed_port`` is never
        moved when it is taken). With auth,
        ``key`` (made if None) is registered first unless ``register=False``
        (then the SuperLink refuses it later)."""
        extra = ["--root-certificates", str(self.ca_cert)] if self.tls else ["--insecure"]
        if self.auth or key is not None:
            if key is None:
                key, _ = make_keypair(self.workdir / "keys" / name, comment=name)
            if register:
                nid = self.register(Path(str(key) + ".pub"), name=name)
                _log(f"registered {name}'s public key (node id {nid})")
            extra += ["--auth-supernode-private-key", str(key)]

        def cmd_for(p: int) -> list[str]:
            return [str(BIN / "flower-supernode"), "--superlink", self.address, "--host", HOST,
                    "--port", str(p), "--node-config", node_config, *extra]

        proc = self._start_bound(name, cmd_for, port if port is not None else self.ports.take(),
                                 self.workdir / f"home_{name}", fixed=fixed_port)
        self.nodes.append(proc)
        return proc

    def check_nodes(self, when: str) -> None:
        """SetupError naming the first SuperNode started here that is no longer running."""
        for n in self.nodes:
            if not n.alive():
                raise SetupError(n.died(when))

    # -- faults ----------------------------------------------------------------
    def kill(self, proc: Proc) -> None:
        """SIGKILL ``proc`` and everything in its process group (its superexec and
        app processes): a crash, with no goodbye to the SuperLink."""
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait(timeout=30)
        _log(f"killed {proc.name} (pid {proc.popen.pid}) with SIGKILL")

    def restart(self, proc: Proc) -> Proc:
        """Start ``proc`` again with the same command and FLWR_HOME (the same
        machine coming back); its log is appended to."""
        if proc.alive():
            raise RuntimeError(f"{proc.name} is still running")
        assert proc.home is not None
        new = self._spawn(proc.name, proc.cmd, proc.home, port=proc.port)
        self.procs.remove(proc)
        if proc in self.nodes:
            self.nodes[self.nodes.index(proc)] = new
        return new

    def serverapp_pids(self) -> list[int]:
        """PIDs of the ServerApp processes (``flwr-serverapp``) this SuperLink
        started: descendants of its process, or app processes pointed at its
        address."""
        link = next((p for p in self.procs if p.name == "superlink"), None)
        if link is None:
            return []
        parent: dict[int, int] = {}
        cmds: dict[int, str] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                cmds[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue

        def under_link(pid: int) -> bool:
            for _ in range(20):
                if pid == link.popen.pid:
                    return True
                pid = parent.get(pid, 0)
                if pid <= 1:
                    return False
            return False

        return sorted(pid for pid, cmd in cmds.items()
                      if "flwr-serverapp" in cmd and (under_link(pid) or f":{self.port}" in cmd))

    def stop_run(self, run_id: int) -> None:
        self.cli("stop", str(run_id), "fedagg", timeout=60)

    def up(self, supernodes: int, timeout: float = 60.0, node_ports: list[int] | None = None,
           slowdown: dict[int, float] | None = None) -> None:
        """Start the SuperLink (unless given) and ``supernodes`` SuperNodes, each
        listening on its own port (``node_ports``, else ones reserved here all
        at once); a process that dies on start raises SetupError.
        ``slowdown``: SuperNode index -> seconds its ClientApp sleeps before
        each train reply (node config ``slowdown-s``; a test/benchmark knob)."""
        self._prepare_certs()
        ports = node_ports if node_ports is not None else self.ports.take_many(supernodes)
        if self.superlink is None:
            self.start_superlink()
        self._write_cli_config()
        self.wait_ready(timeout)
        for i in range(supernodes):
            extra = f" slowdown-s={float(slowdown[i])}" if slowdown and i in slowdown else ""
            self.start_supernode(f"supernode{i}", f"partition-id={i} num-partitions={supernodes}{extra}",
                                 port=ports[i], fixed_port=node_ports is not None)

    # -- runs ----------------------------------------------------------------
    def submit(self, overrides: str, out_dir: Path) -> int:
        out_dir = Path(out_dir).resolve()
        rc = self.workdir / f"run-config-{time.time_ns()}.toml"  # a TOML file: no quoting trouble
        rc.write_text(f"overrides = {json.dumps(overrides)}\nout-dir = {json.dumps(str(out_dir))}\n")
        res = self.cli_json("run", str(self.app_dir), "fedagg", "--run-config", str(rc), timeout=300)
        if not res.get("success") or "run-id" not in res:
            raise RuntimeError(f"flwr run failed to submit: {res.get('error-message', res)}")
        return int(res["run-id"])

    def status(self, run_id: int) -> str:
        res = self.cli_json("ls", "--run-id", str(run_id), timeout=60)
        runs = res.get("runs") or []
        return str(runs[0].get("status", "")) if runs else ""

    def wait_run(self, run_id: int, timeout: float = 900.0, out_dir: Path | None = None,
                 ls_every: float = 10.0) -> str:
        """Poll ``flwr ls --run-id`` until ``finished:*``. Each ``flwr`` call is a
        fresh Python process (~1-3 s CPU), so it is asked every ``ls_every`` s,
        and at once when the ServerApp's status.json in ``out_dir`` (if this
        machine sees it) says it is done."""
        deadline = time.time() + timeout
        st, last_ls, hint = "", 0.0, None
        while time.time() < deadline:
            if out_dir is not None:
                try:
                    s = json.loads((Path(out_dir) / "status.json").read_text())
                    if s.get("run_id") == run_id and s.get("status") != "running":
                        hint = s.get("status")
                except (OSError, ValueError):
                    pass
            if hint or time.time() - last_ls >= ls_every:
                st, last_ls = self.status(run_id), time.time()
                if st.startswith("finished:"):
                    return st
            for n in self.nodes:
                if not n.alive() and not getattr(n, "_reported", False):
                    _log(f"warning: {n.name} exited with status {n.popen.returncode}:\n{n.tail(5)}")
                    n._reported = True  # type: ignore[attr-defined]
            link = next((p for p in self.procs if p.name == "superlink"), None)
            if link is not None and not link.alive():
                _log(f"error: {link.died('during the run')}")
                return f"superlink exited with status {link.popen.returncode}"
            time.sleep(1.0)
        return f"timeout (last status {st or 'unknown'!r} after {timeout:.0f}s)"

    def run_log(self, run_id: int, lines: int = 30) -> str:
        try:
            r = self.cli("log", str(run_id), "fedagg", "--show", timeout=60)
            return "\n".join((r.stdout + r.stderr).splitlines()[-lines:])
        except subprocess.TimeoutExpired:
            return "(flwr log timed out)"

    def run(self, overrides: str, out_dir: Path, timeout: float = 900.0) -> RunResult:
        t0 = time.time()
        try:
            rid = self.submit(overrides, out_dir)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return RunResult(None, overrides, str(out_dir), "submit-failed", time.time() - t0, str(e))
        _log(f"run {rid} submitted: {overrides!r} -> {out_dir}")
        st = self.wait_run(rid, timeout, out_dir=out_dir)
        res = RunResult(rid, overrides, str(out_dir), st, time.time() - t0)
        if not res.ok:
            # the ServerApp's own status.json names the cause reliably; flwr log may not be flushed yet
            cause = ""
            try:
                cause = json.loads((Path(out_dir) / "status.json").read_text()).get("error", "")
            except (OSError, ValueError):
                pass
            res.error = (f"ServerApp error: {cause}\n" if cause else "") + self.run_log(rid)
            if st.startswith("timeout"):
                self.cli("stop", str(rid), "fedagg", timeout=60)
        _log(f"run {rid}: {st} after {res.seconds:.1f}s")
        return res

    # -- teardown --------------------------------------------------------------
    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group started here (by its PID), SIGKILL after ``grace`` s."""
        for p in reversed(self.procs):
            if p.alive():
                try:
                    os.killpg(p.popen.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.time() + grace
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # the group leader or leftover children (superexec, app processes)
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        self.nodes.clear()
        self.ports.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernodes", type=int, default=2, help="SuperNodes to start here (partition-id 0..N-1)")
    ap.add_argument("--run", action="append", dest="runs", metavar="OVERRIDES",
                    help="Hydra overrides of one run (repeat for several runs on the same SuperLink)")
    ap.add_argument("--out-dir", default="deploy-results", help="results (several runs: OUT_DIR/run<k>)")
    ap.add_argument("--tls", action="store_true", help="HTTPS between everything and the SuperLink")
    ap.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls)")
    ap.add_argument("--certs", help="dir with ca.crt, server.pem, server.key (default: generate)")
    ap.add_argument("--superlink", help="HOST:PORT of a running SuperLink (none is started)")
    ap.add_argument("--ca-cert", help="CA certificate of --superlink (with --tls)")
    ap.add_argument("--port", type=int, help="SuperLink port (default: a free one)")
    ap.add_argument("--supernode-ports", metavar="P1,P2,...",
                    help="Runtime API ports of the SuperNodes started here, one each (default: free ones)")
    ap.add_argument("--slowdown", action="append", default=[], metavar="I=SECONDS",
                    help="SuperNode I sleeps SECONDS before each train reply (node config slowdown-s: a "
                         "deliberately slow node, for tests and benchmarks of server.mode=fedasync|fedbuff|fedfix)")
    ap.add_argument("--workdir", help="logs, FLWR_HOMEs, keys (default: a temp dir)")
    ap.add_argument("--run-timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--startup-timeout", type=float, default=60.0,
                    help="seconds to wait for the SuperLink and each SuperNode to come up")
    a = ap.parse_args(argv)
    runs = a.runs or [""]
    if a.supernodes < 0:
        ap.error("--supernodes must be >= 0")
    node_ports = None
    if a.supernode_ports is not None:
        try:
            node_ports = [int(x) for x in a.supernode_ports.split(",") if x.strip()]
        except ValueError:
            node_ports = []
        if len(node_ports) != a.supernodes or len(set(node_ports)) != len(node_ports):
            ap.error(f"--supernode-ports {a.supernode_ports}: give {a.supernodes} distinct port numbers, "
                     "comma-separated")
    slowdown: dict[int, float] = {}
    for item in a.slowdown:
        try:
            i, secs = item.split("=", 1)
            slowdown[int(i)] = float(secs)
        except ValueError:
            ap.error(f"--slowdown {item}: give I=SECONDS, e.g. --slowdown 2=3")
        if not 0 <= int(i) < a.supernodes or not slowdown[int(i)] >= 0:
            ap.error(f"--slowdown {item}: I must be in 0..{a.supernodes - 1} and SECONDS >= 0")
    if a.certs is not None and not Path(a.certs).is_dir():
        print(f"error: --certs: directory not found: {a.certs}", file=sys.stderr)
        return 2
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="fedagg-deploy-"))
    out = Path(a.out_dir).resolve()
    cluster = None

    def _term(signum, frame):  # noqa: ANN001 - stop the processes on Ctrl-C / kill
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    results: list[RunResult] = []
    try:
        cluster = Cluster(workdir, tls=a.tls or a.auth or bool(a.ca_cert), auth=a.auth,
                          certs=Path(a.certs) if a.certs else None, ca_cert=Path(a.ca_cert) if a.ca_cert else None,
                          port=a.port, superlink=a.superlink, start_timeout=a.startup_timeout)
        cluster.up(a.supernodes, timeout=a.startup_timeout, node_ports=node_ports, slowdown=slowdown)
        for k, ov in enumerate(runs, 1):
            cluster.check_nodes(f"before run {k} was submitted")
            res = cluster.run(ov, out if len(runs) == 1 else out / f"run{k}", timeout=a.run_timeout)
            results.append(res)
            print(json.dumps({"run-id": res.run_id, "status": res.status, "overrides": ov, "out-dir": res.out_dir,
                              "seconds": round(res.seconds, 1)}), flush=True)
            if not res.ok:
                _log(f"run {res.run_id} did not complete ({res.status}); its log ends with:\n{res.error}")
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if cluster is not None:
            cluster.stop()
        _log(f"logs in {workdir / 'logs'}")
    ok = all(r.ok for r in results)
    print(json.dumps({"completed": sum(r.ok for r in results), "runs": len(results), "success": ok}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
