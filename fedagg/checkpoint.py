"""Atomic checkpoints of the whole server state, and exact resume.

A checkpoint holds the round number, the global model (all node models for
gossip live in the aggregator state), the aggregator's state, the
participation environment's state, the virtual clock, the asynchronous
modes' schedule and waiting updates, and the metrics so far; for rules with
client state (SCAFFOLD, FedDyn), every virtual client's state is written to
``client_state.ckpt.sqlite`` next to it (:mod:`fedagg.runtime.state_store`)
and the checkpoint records that file, its client count and array names. Every random draw
in fedagg comes from a named stream keyed by (seed, purpose, round, client),
so there are no RNG positions beyond those states to save.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

from .config import to_dict
from .errors import ResumeError

NAME = "checkpoint.pkl"
# keys whose value may differ between the original run and the resumed one
RESUME_FREE_KEYS = {"rounds", "resume", "checkpoint", "runtime", "logger", "server", "hydra", "device"}
RESUME_BOUND_KEYS = ("server.deadline_s", "server.deadline_mode",  # ... but these decide who replies
                     "server.mode", "server.concurrency", "server.buffer_size", "server.window_s",  # ... and these
                     "server.alpha", "server.staleness", "server.staleness_a", "server.staleness_b")  # the updates


def save(out: Path, rnd: int, exp: Any, host: Any, rec: Any) -> Path:
    store = getattr(exp, "client_state", None)
    client_state = None
    if store is not None:
        from .runtime.state_store import SNAPSHOT_NAME

        client_state = store.snapshot(Path(out) / SNAPSHOT_NAME)
    state = {
        "round": rnd,
        "params": host.params,
        "aggregator": exp.aggregator.state_dict(),
        "participation": exp.participation.state_dict(),
        "clock": exp.clock.state_dict() if getattr(exp, "clock", None) is not None else None,
        # the asynchronous modes: the schedule (its time, version, jobs in flight) and the jobs' trained updates
        # with the models they were sent (shared by the jobs of one version: pickled once)
        "async": exp.async_loop.state_dict() if getattr(exp, "async_loop", None) is not None else None,
        "rows": rec.rows,
        "details": rec.details,
        "config": to_dict(exp.cfg),
        "client_state": client_state,
    }
    path = Path(out) / NAME
    tmp = path.with_name(f".{NAME}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if not prefix and k in RESUME_FREE_KEYS:
                continue
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _at(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


KEYS = ("round", "params", "aggregator", "participation", "rows", "details", "config")


def read(path: Path) -> dict[str, Any]:
    """A checkpoint file's state; a file that is not one (truncated, garbage,
    another program's pickle) is a ResumeError naming it and what is wrong."""
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except OSError as e:
        raise ResumeError(f"{path}: cannot be read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - whatever unpickling a damaged file raises
        what = str(e).splitlines()[0] if str(e) else "no detail"
        raise ResumeError(f"{path} is not a readable checkpoint ({type(e).__name__}: {what}); it may be truncated "
                          "or damaged: start a new run, or restore the file") from None
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ResumeError(f"{path} is not a fedagg checkpoint (no {', '.join(missing)}); start a new run")
    return state


def load_for_resume(run_dir: Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Read the checkpoint in ``run_dir`` once and refuse it, naming the key,
    unless ``cfg`` can continue it exactly."""
    path = Path(run_dir) / NAME
    if not path.exists():
        raise ResumeError(f"resume={run_dir}: no {NAME} there; run with checkpoint.every=k to write one")
    state = read(path)
    changed = config_diff(state["config"], cfg)
    changed += [k for k in RESUME_BOUND_KEYS if _at(state["config"], k) != _at(cfg, k)]
    if changed:
        shown = "; ".join(f"{k}: {_at(state['config'], k)!r} in the checkpoint, {_at(cfg, k)!r} now" for k in changed[:5])
        raise ResumeError(
            f"resume={run_dir} would change the result: {shown}; drop those overrides to continue the run, "
            "or start a new run"
        )
    if int(state["round"]) >= int(cfg["rounds"]):
        raise ResumeError(
            f"resume={run_dir}: the checkpoint is at round {state['round']}, rounds={cfg['rounds']}; "
            "nothing to do (raise rounds)"
        )
    return state


def check_client_state(state: Mapping[str, Any], run_dir: Path, stateful: bool, names: list[str]) -> None:
    """The checkpoint's client states are the ones this rule keeps (or it has none and needs none)."""
    cs = state.get("client_state")
    if cs is None:
        if stateful and int(state["round"]) > 0:
            raise ResumeError(f"resume={run_dir}: the checkpoint holds no client state, but aggregator "
                              f"{_at(state['config'], 'aggregator.name')!r} keeps one per client; start a new run")
        return
    if not stateful:
        raise ResumeError(f"resume={run_dir}: the checkpoint holds client state ({cs.get('clients')} clients) that "
                          "this run's aggregator does not keep; resume with the aggregator that wrote it")
    if not isinstance(cs, Mapping) or not (Path(run_dir) / str(cs.get("file"))).is_file():
        raise ResumeError(f"resume={run_dir}: the checkpoint's client-state file {cs.get('file')!r} is missing; "
                          "restore it next to checkpoint.pkl, or start a new run")
    got = list(cs.get("names") or [])
    if got and sorted(got) != sorted(names):
        raise ResumeError(f"resume={run_dir}: the checkpoint's client state holds arrays {got[:3]}..., this "
                          f"model's are {sorted(names)[:3]}...: unknown state; start a new run")


def restore(state: Mapping[str, Any], exp: Any, host: Any, rec: Any) -> int:
    """Put a loaded checkpoint into the components; returns its last finished round."""
    host.params = state["params"]
    exp.aggregator.load_state_dict(state["aggregator"])
    exp.participation.load_state_dict(state["participation"])
    if state.get("clock") is not None and getattr(exp, "clock", None) is not None:
        exp.clock.load_state_dict(state["clock"])
    if state.get("async") is not None and getattr(exp, "async_loop", None) is not None:
        exp.async_loop.load_state_dict(state["async"])
    rec.load(state["rows"], state["details"])
    cs, store = state.get("client_state"), getattr(exp, "client_state", None)
    if cs is not None and store is not None:
        store.restore(Path(exp.cfg.resume) / str(cs["file"]))
    return int(state["round"])
