"""The driver's store of the virtual clients' states between rounds (simulation only).

In simulation a worker serves many virtual clients, so a client's state (SCAFFOLD's control
variate) cannot stay in a worker's memory: the grid (:mod:`fedagg.runtime.inprocess`,
:mod:`fedagg.runtime.ray_grid`) keeps it here, on the driver, and sends it with the client's
work to whichever worker trains it (:mod:`fedagg.flower.client_state`); the worker's reply brings
the new state back. Results therefore do not depend on the number of workers.

Bounded: the most recently used states stay in memory up to ``runtime.state_memory_mb``; older
ones are spilled to ``client_state.sqlite`` in the run folder and read back when their client is
asked again. The spill file is **sqlite3** from Python's standard library: always available (no
new dependency), one file, random access by client id, transactional writes, no size limit and
nothing to tune; each value is the client's arrays as ``numpy.savez`` bytes read back with
``allow_pickle=False`` (no pickle: a damaged file cannot run code). A client never asked has no
entry and starts from the rule's initial state. Stateless rules build no store at all.

Checkpoints (:mod:`fedagg.checkpoint`) write every entry to ``client_state.ckpt.sqlite`` next to
``checkpoint.pkl`` (atomically: a temporary file, then a rename) and a resume reads it back, so
a killed and resumed run continues bitwise as the uninterrupted one.
"""
from __future__ import annotations

import io
import os
import shutil
import sqlite3
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import ConfigError

Params = dict[str, np.ndarray]
SPILL_NAME = "client_state.sqlite"
SNAPSHOT_NAME = "client_state.ckpt.sqlite"


class StoreFull(RuntimeError):
    """The memory budget is spent and the store may not spill."""


def _encode(params: Params) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **params)  # type: ignore[arg-type]  # numpy's stub checks **arrays against its allow_pickle: bool
    return buf.getvalue()


def _decode(blob: bytes) -> Params:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE IF NOT EXISTS state (client INTEGER PRIMARY KEY, value BLOB NOT NULL)")
    return db


class ClientStateStore:
    """Client id -> that client's state arrays, in memory up to ``budget_bytes``, then in
    ``spill_path`` (None: no spilling, a full budget is :class:`StoreFull`)."""

    def __init__(self, budget_bytes: int, spill_path: Path | None) -> None:
        self.budget = int(budget_bytes)
        self.spill_path = None if spill_path is None else Path(spill_path)
        self._mem: OrderedDict[int, Params] = OrderedDict()
        self._bytes = 0
        self._db: sqlite3.Connection | None = None
        self._on_disk: set[int] = set()  # clients with an entry in the file (a newer one in memory shadows it)

    # -- what the grids use ---------------------------------------------------------
    def get(self, client: int) -> Params | None:
        """The client's state (None: never stored)."""
        got = self._mem.get(client)
        if got is not None:
            self._mem.move_to_end(client)
            return got
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM state WHERE client = ?", (int(client),)).fetchone()
        return None if row is None else _decode(row[0])

    def put(self, client: int, state: Params) -> None:
        """Keep ``state`` (copied) as the client's state, spilling the least recently used ones."""
        state = {k: np.array(v, copy=True) for k, v in state.items()}
        size = sum(v.nbytes for v in state.values())
        old = self._mem.pop(client, None)
        if old is not None:
            self._bytes -= sum(v.nbytes for v in old.values())
        self._mem[client] = state
        self._bytes += size
        while self._bytes > self.budget and self._mem:
            cid, victim = self._mem.popitem(last=False)
            self._bytes -= sum(v.nbytes for v in victim.values())
            self._spill(cid, victim)

    def __len__(self) -> int:
        return len(self._on_disk.union(self._mem))

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def _spill(self, client: int, state: Params) -> None:
        if self.spill_path is None:
            raise StoreFull(f"the client-state store is full: runtime.state_memory_mb={self.budget / 2**20:g} "
                            f"and runtime.state_spill=false")
        if self._db is None:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _open(self.spill_path)
        self._db.execute("INSERT OR REPLACE INTO state (client, value) VALUES (?, ?)", (int(client), _encode(state)))
        self._db.commit()
        self._on_disk.add(int(client))

    # -- checkpoints ---------------------------------------------------------------------
    def snapshot(self, path: Path) -> dict[str, object]:
        """Write every entry to ``path`` (atomically); what the checkpoint records about it."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        if tmp.exists():
            tmp.unlink()
        out = _open(tmp)
        if self._db is not None:
            self._db.backup(out)
        out.executemany("INSERT OR REPLACE INTO state (client, value) VALUES (?, ?)",
                        [(int(c), _encode(s)) for c, s in self._mem.items()])
        out.commit()
        n = int(out.execute("SELECT COUNT(*) FROM state").fetchone()[0])
        out.close()
        os.replace(tmp, path)
        names = sorted(next(iter(self._mem.values()))) if self._mem else self._spilled_names()
        return {"file": path.name, "clients": n, "names": names}

    def _spilled_names(self) -> list[str]:
        if self._db is None:
            return []
        row = self._db.execute("SELECT value FROM state LIMIT 1").fetchone()
        return [] if row is None else sorted(_decode(row[0]))

    def restore(self, path: Path) -> None:
        """Replace the store's content by the snapshot at ``path``."""
        self._mem.clear()
        self._bytes = 0
        if self._db is not None:
            self._db.close()
            self._db = None
        self._on_disk = set()
        if self.spill_path is not None and Path(path).resolve() != self.spill_path.resolve():
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.spill_path)
            self._db = _open(self.spill_path)
            self._on_disk = {int(r[0]) for r in self._db.execute("SELECT client FROM state")}
            return
        db = _open(Path(path))
        try:
            for cid, blob in db.execute("SELECT client, value FROM state ORDER BY client"):
                self.put(int(cid), _decode(blob))
        finally:
            db.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def state_bytes(params: Params, names: list[str]) -> int:
    """Bytes of one client's state: one array per named parameter."""
    return sum(int(np.asarray(params[n]).nbytes) for n in names)


def check_budget(memory_mb: float, spill: bool, num_clients: int, bytes_each: int) -> None:
    """A budget that cannot hold every client's state, with spilling off, is a ConfigError (before training)."""
    budget = int(float(memory_mb) * 2**20)
    if not spill and bytes_each * num_clients > budget:
        fits = budget // max(bytes_each, 1)
        raise ConfigError(
            f"runtime.state_memory_mb={memory_mb:g} holds the state of {fits} of num_clients={num_clients} clients "
            f"({bytes_each / 2**20:.3g} MB each) and runtime.state_spill=false: raise runtime.state_memory_mb to "
            f"at least {bytes_each * num_clients / 2**20:.4g} or set runtime.state_spill=true")


def open_store(memory_mb: float, spill: bool, run_dir: Path) -> ClientStateStore:
    """The run's store: ``memory_mb`` in memory, then ``run_dir/client_state.sqlite`` (``spill``)."""
    spill_path = Path(run_dir) / SPILL_NAME if spill else None
    if spill_path is not None and spill_path.exists():  # a file of an earlier run in this folder: not this run's
        spill_path.unlink()
    return ClientStateStore(int(float(memory_mb) * 2**20), spill_path)
