"""``runtime=ray``: a Flower ``Grid`` backed by a pool of persistent Ray actors.

How it works (one round):

* every simulated node (``partition-id`` i) belongs to one fixed actor,
  ``i % num_workers``; that actor keeps the node's ``Context`` between
  rounds, imports the ClientApp once and caches the node's data shard (the
  ClientApp caches data by spec per process), so only messages cross
  processes;
* ``push_messages`` groups each actor's messages into calls of
  ``runtime.batch_size`` messages (``auto``: one call per actor per round;
  with ``runtime.vectorize`` a chunk of clients is one message, so the
  default 8 sends each worker its round's chunks in one call)
  and submits them all at once; ``send_and_receive`` collects the replies with
  ``ray.wait`` as calls complete -- no polling sleeps;
* ``flwr.app.Message`` pickles as is (metadata, content and error are plain
  attributes); each reply has ``reply_to_message_id`` = the id this grid gave
  the sent message and ``src_node_id`` = the node; an ``Array``'s bytes of
  1 MiB or more travel out of band (:func:`array_transport`): copied once
  into Ray's object store and read back without a copy, where pickling them
  in band copies them twice more: a chunk of 10 ResNet-20 clients is 11 MB,
  and its way back takes about 0.7x the time (``scripts/bench_transport.py``);
* an actor that dies (its process is killed) is restarted by Ray
  (``max_restarts=-1``); the calls it had in flight are sent again, to the
  next actor, up to ``runtime.max_retries`` times each, after which their
  messages become error replies (a crashed client is a non-participating
  client, not a crashed run);
* each actor runs ``torch.set_num_threads(num_cpus_per_client)`` so a
  client's result does not depend on which actor ran it: results are
  bitwise identical for any ``num_workers``.

Ray start-up is the expensive part (seconds), so it is paid once:

* ``runtime.address`` (``auto``, ``host:port`` or ``ray://host:port``)
  connects to a running cluster, e.g. one started for a whole sweep::

      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --port 6379 --num-cpus 2 \\
          --include-dashboard=false --node-ip-address 127.0.0.1
      fedagg -m runtime=ray runtime.address=127.0.0.1:6379 seed=0,1,2
      ray stop

  An unreachable address fails within ``runtime.connect_timeout`` seconds
  with an error naming ``runtime.address``. fedagg never shuts down a
  cluster it did not start.
* Ray maps ``127.0.0.1`` to the host's network address unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine mode; without
  it even ``--node-ip-address 127.0.0.1`` binds the host's address). fedagg
  sets it (unless you did) while it starts a local instance and while it
  connects to a loopback ``runtime.address``, so a run on one machine talks
  only to 127.0.0.1; a cluster head on loopback needs it too (above).
  Ray's usage statistics are off unless ``RAY_USAGE_STATS_ENABLED`` says
  otherwise.
* Otherwise a local Ray instance is started on first use and kept for the
  life of the process (Ray shuts it down at exit), so later Hydra multirun
  jobs in the same process reuse it. If Ray is already initialised (an
  earlier job, or the caller), it is reused.
* The actor pool itself is cached per process and reused by later runs with
  the same resources (its data caches stay warm); each run gets fresh node
  Contexts. Call :func:`shutdown` to drop the pool (and stop Ray if fedagg
  started it).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
from flwr.app import Array, Context, Error, Message, RecordDict

from ..errors import ConfigError
from ..outcomes import held_interrupts
from .calls import call_client, reply_from_node
from .inprocess import NODE_ID_BASE, SimulatedGrid, set_task_identity

if TYPE_CHECKING:
    from ..config import RuntimeConfig

log = logging.getLogger("fedagg")

ERROR_CODE_WORKER_LOST = 2

# Test hooks: ``HOOKS["after_push"](grid, n)`` runs after the n-th push (n = 1
# is the id query, n = 2 round 1, ...), e.g. to kill an actor mid-round.
HOOKS: dict[str, Callable[..., Any]] = {}


# --------------------------------------------------------------------------- Arrays on the wire
OUT_OF_BAND_BYTES = 1 << 20  # an Array's data this large travels as an out-of-band buffer


def _array_to_wire(arr: Array) -> tuple[str, tuple[int, ...], str, bytes | np.ndarray]:
    data = arr.data
    if len(data) >= OUT_OF_BAND_BYTES:  # a numpy buffer: pickle protocol 5 hands it to Ray out of band
        return arr.dtype, tuple(arr.shape), arr.stype, np.frombuffer(data, dtype=np.uint8)
    return arr.dtype, tuple(arr.shape), arr.stype, bytes(data)


def _array_from_wire(wire: tuple[str, tuple[int, ...], str, bytes | np.ndarray]) -> Array:
    """The Array, its data a read-only view of the buffer Ray hands back (no copy). Flower's
    constructor wants ``bytes``: the fields are set as its own ``__init__`` sets them."""
    dtype, shape, stype, data = wire
    arr = Array.__new__(Array)
    arr.__dict__.update(dtype=dtype, shape=shape, stype=stype,
                        data=data if isinstance(data, bytes) else data.data.cast("B"))
    return arr


def use_array_transport(on: bool = True) -> None:
    """Pickle this process's ``Array`` objects with :func:`_array_to_wire` (``on=False``: as Python would)."""
    from ray.util import deregister_serializer, register_serializer

    if on:
        register_serializer(Array, serializer=_array_to_wire, deserializer=_array_from_wire)
    else:
        deregister_serializer(Array)


@contextmanager
def array_transport() -> Iterator[None]:
    """:func:`use_array_transport` for the duration (the driver; fedagg's actors keep it for life)."""
    use_array_transport(True)
    try:
        yield
    finally:
        use_array_transport(False)


# --------------------------------------------------------------------------- the actor
class ClientWorker:
    """One Ray actor: runs the ClientApp for the nodes assigned to it."""

    def __init__(self, num_threads: int) -> None:
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        set_task_identity()
        use_array_transport()
        from ..flower.client_app import app, for_dp_mode

        self.app = app
        self.for_dp_mode = for_dp_mode
        self.token: str | None = None
        self.contexts: dict[int, Context] = {}

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def _context(self, msg: Message, node_config: dict[str, Any]) -> Context:
        nid = msg.metadata.dst_node_id
        ctx = self.contexts.get(nid)
        if ctx is None:
            ctx = self.contexts[nid] = Context(
                run_id=1, node_id=nid, node_config=dict(node_config), state=RecordDict(), run_config={}
            )
        return ctx

    def run(self, token: str, batch: list[tuple[Message, dict[str, Any]]], dp_mode: str = "none") -> list[Message]:
        """Per-client messages, answered by the ClientApp for the run's ``dp.mode`` (its clipping mod)."""
        if token != self.token:  # a new run: fresh node Contexts
            self.token, self.contexts = token, {}
        app = self.for_dp_mode(dp_mode)
        return [call_client(app, msg, self._context(msg, nc)) for msg, nc in batch]

    def run_chunks(self, token: str, msgs: list[Message], node_config: dict[str, Any]) -> list[Message]:
        """Chunk messages (runtime.vectorize), in order: the ClientApp's chunk handler answers each."""
        if token != self.token:
            self.token, self.contexts = token, {}
        ctx = self.contexts.get(-1)
        if ctx is None:
            ctx = self.contexts[-1] = Context(run_id=1, node_id=0, node_config=dict(node_config), state=RecordDict(),
                                              run_config={})
        return [call_client(self.app, msg, ctx) for msg in msgs]


# --------------------------------------------------------------------------- the pool
@dataclass
class _Pool:
    key: tuple[Any, ...]
    session: tuple[str, str]
    actors: list[Any]
    info: list[dict[str, Any]] = field(default_factory=list)


_POOL: _Pool | None = None
_STARTED_RAY = False  # True when fedagg called ray.init() for a local instance


def _session() -> tuple[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    try:
        node = ray._private.worker._global_node  # noqa: SLF001
        name = node.session_name if node is not None else ""
    except Exception:  # noqa: BLE001
        name = ""
    return name, ctx.get_job_id()


def _check_address(address: str, timeout: float) -> None:
    """Fail fast, naming the key, when a cluster address cannot be reached."""
    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            return _check_address(os.environ["RAY_ADDRESS"], timeout)
        return  # ray.init raises quickly if no local cluster is running; wrapped by the caller
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"runtime.address='{address}' is not of the form auto, host:port or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(
            f"runtime.address='{address}' is not reachable ({type(e).__name__}: {e}); start a cluster "
            "there (ray start --head ...) or set runtime.address=null to start a local one"
        ) from e


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is 127.0.0.1


def is_loopback(address: str | None) -> bool:
    """True for no address (a local instance) and for a ``127.x`` /
    ``localhost`` / ``[::1]`` cluster address."""
    if not address:
        return True
    host = str(address).split("://", 1)[-1].rstrip("/").rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


@contextmanager
def loopback_ray(address: str | None) -> Iterator[None]:
    """Start or join Ray on 127.0.0.1 only (see the module docstring): sets
    :data:`LOOPBACK_ENV` for the duration (Ray's daemons inherit it) unless the
    caller set it or ``address`` names another host (``auto`` is left as it
    is: the running cluster decides)."""
    set_here = LOOPBACK_ENV not in os.environ and address != "auto" and is_loopback(address)
    if not set_here:
        yield
        return
    from ray._private import ray_constants  # read at Ray's import: this process may have imported Ray already

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[LOOPBACK_ENV] = "0"  # for the daemons and workers Ray starts now
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this driver
    try:
        yield
    finally:
        os.environ.pop(LOOPBACK_ENV, None)
        ray_constants.ENABLE_RAY_CLUSTER = before


def init_ray(rt: RuntimeConfig) -> None:
    """Connect to ``runtime.address``, reuse an initialised Ray, or start a local one."""
    global _STARTED_RAY
    import ray

    address = rt.address
    timeout = rt.connect_timeout
    if address:
        _check_address(str(address), timeout)
    if ray.is_initialized():
        if not (address and _STARTED_RAY):
            return  # an earlier job's Ray (or the caller's): reuse it
        shutdown()  # our local instance, but this run names a cluster
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        try:
            with loopback_ray(str(address)):
                ray.init(address=str(address), **common)
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            raise ConfigError(f"runtime.address='{address}': could not connect to a Ray cluster: {e}") from e
        return
    tmp = os.environ.get("RAY_TMPDIR")
    with loopback_ray(None):
        ray.init(
            num_cpus=int(rt.num_cpus or os.cpu_count() or 1),
            num_gpus=rt.num_gpus,  # type: ignore[arg-type]  # Ray's stub says int; ray.init takes the configured float as it is
            _temp_dir=tmp if tmp else None,
            **common,
        )
    _STARTED_RAY = True


def release_pool() -> None:
    """Kill the cached actor pool (its actors hold their CPUs and GPUs) but keep Ray:
    for Flower's engine, which sizes its own actors from the free resources."""
    global _POOL
    import ray

    if _POOL is not None and ray.is_initialized():
        for a in _POOL.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
    _POOL = None


def shutdown() -> None:
    """Kill the cached actor pool; stop Ray if fedagg started it (never a
    cluster it only connected to -- that only disconnects this driver)."""
    global _STARTED_RAY
    import ray

    release_pool()
    if ray.is_initialized():
        ray.shutdown()
    _STARTED_RAY = False


def _resolve_workers(rt: RuntimeConfig, num_clients: int) -> int:
    import ray

    cpus, gpus = rt.num_cpus_per_client, rt.num_gpus_per_client
    res = ray.cluster_resources()
    fit = int(math.floor(res.get("CPU", 0) / cpus + 1e-9))
    if gpus > 0:
        fit = min(fit, int(math.floor(res.get("GPU", 0) / gpus + 1e-9)))
    want = rt.num_workers
    if want is None:
        n = fit
    else:
        n = int(want)
        if n < 1:
            raise ConfigError(f"runtime.num_workers={want} must be >= 1 (or null = cores / num_cpus_per_client)")
        if n > fit:
            raise ConfigError(
                f"runtime.num_workers={n} needs {n * cpus:g} CPUs"
                + (f" and {n * gpus:g} GPUs" if gpus else "")
                + f" but the Ray cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs"
            )
    if n < 1:
        raise ConfigError(
            f"runtime.num_cpus_per_client={cpus:g}, num_gpus_per_client={gpus:g}: no worker fits the Ray cluster "
            f"({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)"
        )
    return max(1, min(n, num_clients))


def wait_ready(actors: list[Any], timeout: float) -> list[dict[str, Any]]:
    """Each actor's info, waiting for actors that Ray is restarting."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get([a.info.remote() for a in actors], timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # restarting: not a polling loop on the hot path


def get_pool(rt: RuntimeConfig, num_clients: int) -> _Pool:
    """The cached actor pool for these resources, (re)built if needed."""
    global _POOL
    import ray

    n = _resolve_workers(rt, num_clients)
    cpus, gpus = rt.num_cpus_per_client, rt.num_gpus_per_client
    key = (n, cpus, gpus)
    session = _session()
    if _POOL is not None and _POOL.key == key and _POOL.session == session:
        try:
            _POOL.info = wait_ready(_POOL.actors, 60)
            return _POOL
        except Exception:  # noqa: BLE001 - a stale pool: rebuild it
            log.info("ray runtime: cached actor pool is gone; starting a new one")
    if _POOL is not None and _POOL.session == session:
        for a in _POOL.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
    cls = ray.remote(ClientWorker).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
    )
    threads = max(1, int(cpus))
    actors = [cls.remote(threads) for _ in range(n)]
    timeout = rt.start_timeout
    try:
        info = wait_ready(actors, timeout)
    except ray.exceptions.GetTimeoutError as e:
        raise RuntimeError(
            f"runtime=ray: {n} workers did not start within {timeout:g}s (runtime.start_timeout); "
            f"each needs {cpus:g} CPUs / {gpus:g} GPUs; cluster: {ray.cluster_resources()}"
        ) from e
    _POOL = _Pool(key, session, actors, info)
    return _POOL


# --------------------------------------------------------------------------- the grid
class RayGrid(SimulatedGrid):
    def __init__(self, pool: _Pool, num_nodes: int, batch_size: int | str = 8, max_retries: int = 2,
                 node_config: dict[str, Any] | None = None, vector: Any = None, dp_mode: str = "none") -> None:
        self.pool = pool
        self.dp_mode = dp_mode  # the workers answer with the ClientApp for it (client_app.for_dp_mode)
        self.vector = vector  # VectorSettings: cohort chunks trained vectorised, whole chunks per worker
        self.num_nodes = int(num_nodes)
        self.extra_node_config = dict(node_config or {})
        self.batch_size = batch_size
        self.max_retries = int(max_retries)
        self.token = uuid.uuid4().hex
        # ref -> (actor, its messages -- or, for chunk calls, its chunks --, attempt, cohort)
        self._pending: dict[Any, tuple[int, list[Any], int, bool]] = {}
        self._replies: dict[str, Message] = {}
        self._chunks: dict[str, tuple[list[Message], Message]] = {}  # member message id -> (chunk, its reply)
        self._pushes = 0

    @property
    def num_workers(self) -> int:
        return len(self.pool.actors)

    def actor_of(self, node_id: int) -> int:
        return (node_id - NODE_ID_BASE) % self.num_workers

    # -- sending -----------------------------------------------------------------
    def _submit(self, actor: int, msgs: list[Any], attempt: int, cohort: bool = False) -> None:
        """One actor call: ``msgs`` per-client messages, or (``cohort``) chunks of them, one chunk message each."""
        if cohort:
            from .vectorised import chunk_message

            wire = [chunk_message(c, self.node_config, self.vector.stacked) for c in msgs]
            ref = self.pool.actors[actor].run_chunks.remote(self.token, wire, dict(self.extra_node_config))
        else:
            batch = [(m, self.node_config(m.metadata.dst_node_id)) for m in msgs]
            ref = self.pool.actors[actor].run.remote(self.token, batch, self.dp_mode)
        self._pending[ref] = (actor, msgs, attempt, cohort)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        per_actor: dict[int, list[Message]] = {}
        messages = list(messages)
        for msg in messages:
            self.node_config(msg.metadata.dst_node_id)  # an unknown node fails here
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        ids = [m.metadata.message_id for m in messages]
        self.attach_state(messages)
        if self.vector is not None and self.vector.enabled:
            from .vectorised import _plan, deal_chunks

            chunks, work, messages = _plan(messages, self.node_config, self.vector.chunk, self.vector.stacked,
                                           self.num_workers)
            # whole chunks, the most work first to the least loaded worker: a chunk's numbers never depend on workers;
            # runtime.batch_size chunk messages per actor call, as it groups per-client messages
            for actor, js in enumerate(deal_chunks(work, self.num_workers)):  # each worker's most work first
                if not js:
                    continue
                cs = [chunks[j] for j in js]
                size = self._call_size(len(cs))
                for s in range(0, len(cs), size):
                    self._submit(actor, cs[s : s + size], 0, cohort=True)
        for msg in messages:
            per_actor.setdefault(self.actor_of(msg.metadata.dst_node_id), []).append(msg)
        for actor, msgs in per_actor.items():
            size = self._call_size(len(msgs))
            for s in range(0, len(msgs), size):
                self._submit(actor, msgs[s : s + size], 0)
        self._pushes += 1
        if "after_push" in HOOKS:
            HOOKS["after_push"](self, self._pushes)
        return ids

    def _call_size(self, n: int) -> int:
        """Messages per actor call (runtime.batch_size; auto: all ``n`` of the actor's)."""
        return n if self.batch_size == "auto" else max(1, int(self.batch_size))

    def _collect(self, ref: Any) -> None:
        import ray

        actor, msgs, attempt, cohort = self._pending.pop(ref)
        try:
            replies = ray.get(ref)
            if cohort:  # one reply per chunk
                if len(replies) != len(msgs):
                    raise RuntimeError(f"{len(replies)} replies for {len(msgs)} chunk messages")
                for chunk, reply in zip(msgs, replies):
                    self.take_state(reply, chunk)
                    for m in chunk:
                        self._chunks[m.metadata.message_id] = (chunk, reply)
                return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError) as e:
            if attempt < self.max_retries:
                other = (actor + 1 + attempt) % self.num_workers
                n = sum(len(c) for c in msgs) if cohort else len(msgs)
                log.warning("ray runtime: worker %d lost with %d message(s) in flight (%s); retrying on worker %d "
                            "(attempt %d of %d)", actor, n, type(e).__name__, other, attempt + 1,
                            self.max_retries)
                self._submit(other, msgs, attempt + 1, cohort)
                return
            if cohort:
                msgs = [m for chunk in msgs for m in chunk]
            replies = [self._error_reply(m, f"worker lost after {attempt + 1} attempts: {type(e).__name__}: {e}")
                       for m in msgs]
        except Exception as e:  # noqa: BLE001 - a broken call fails its messages, not the run
            if cohort:
                msgs = [m for chunk in msgs for m in chunk]
            replies = [self._error_reply(m, f"{type(e).__name__}: {e}") for m in msgs]
        for m, r in zip(msgs, replies):
            self.take_state(r, [m])
            self._replies[m.metadata.message_id] = r

    @staticmethod
    def _error_reply(msg: Message, reason: str) -> Message:
        return reply_from_node(Message(Error(code=ERROR_CODE_WORKER_LOST, reason=reason), reply_to=msg), msg)

    def wait(self, timeout: float | None = None) -> None:
        """Collect replies as calls complete, until none is pending or the
        timeout passes (late calls are cancelled; their replies are absent)."""
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=left)
            if not done:
                break
            for ref in done:
                self._collect(ref)
        if self._pending:
            for ref in list(self._pending):
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass
            self._pending.clear()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        self.wait(timeout)
        if self.chunk_replies:  # a chunk's reply as it is (fedagg's strategy reads it)
            out = list({id(r): r for _, r in (self._chunks[m] for m in ids if m in self._chunks)}.values())
            out += [self._replies[m] for m in ids if m in self._replies]
        else:
            out = list(self.pull_messages(ids))
        self._replies.clear()  # nothing from this round survives into the next
        self._chunks.clear()
        return out


# --------------------------------------------------------------------------- entry point
def run_ray(server_app: Any, exp: Any, result: dict[str, Any]) -> None:
    from .vectorised import chunk_settings

    rt: RuntimeConfig = exp.cfg.runtime
    vector = chunk_settings(exp)  # before Ray starts: a refused setting starts nothing
    t0 = time.perf_counter()
    set_task_identity()
    with held_interrupts():  # a Ctrl-C waits until Ray is up instead of leaving it half started
        init_ray(rt)
        t1 = time.perf_counter()
        pool = get_pool(rt, exp.cfg.num_clients)
        t2 = time.perf_counter()
    log.info("ray runtime: %d worker(s) on %d Ray node(s); ray.init %.2fs, workers ready %.2fs",
             len(pool.actors), len({i["node_id"] for i in pool.info}), t1 - t0, t2 - t1)
    result["runtime_info"] = {"workers": len(pool.actors), "ray_init_s": t1 - t0, "workers_s": t2 - t1,
                              "worker_pids": [i["pid"] for i in pool.info],
                              "worker_nodes": [i["node_id"] for i in pool.info]}
    grid = RayGrid(pool, exp.cfg.num_clients, batch_size=rt.batch_size, max_retries=rt.max_retries, vector=vector,
                   dp_mode=exp.cfg.dp.mode)
    grid.client_state = getattr(exp, "client_state", None)
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with array_transport():
        server_app(grid, ctx)
