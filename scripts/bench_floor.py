"""The two-worker floor of a round: the benchmark's workload on bare processes, no FL machinery.

``bench_runtime.py``'s ``floor`` variant. The compute ceiling (``bench_cohort.py``) divides one thread's
training by the number of workers, as if two processes on this machine ran twice as fast as one and a
round had nothing but training. This measures what two processes really do here: the round's clients,
cut into the runtime's chunks (:func:`fedagg.runtime.vectorised.cut_group`, stacked where
``runtime.vectorize=auto`` stacks, else one by one) and dealt to the workers as the Ray grid deals them
(:func:`~fedagg.runtime.vectorised.deal_chunks`), are trained by ``workers`` plain Python processes
(one torch thread each) that read the global model from shared memory and write each client's trained
parameters into a shared matrix. The parent then averages them (FedAvg, one matrix product) and
evaluates the global model on the test set, as every runtime's server does after a round.

So a runtime's round cannot be much faster than this on the same machine, unless it overlaps the
server's work with the clients' (none of fedagg's runtimes does); the ratio of a runtime's round to this
one is what its machinery costs.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _compose(conf_dir: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        return compose("config", overrides=overrides)


def plan(cfg: Any, exp: Any, workers: int) -> tuple[list[list[list[int]]], bool]:
    """Each worker's chunks of client ids (most work first, as the Ray grid orders a worker's calls) and
    whether they train stacked (:func:`fedagg.runtime.vectorised.chunk_settings`, as the grids decide)."""
    from fedagg.runtime.vectorised import chunk_settings, cut_group, deal_chunks
    from fedagg.task.work import planned_steps

    tr = cfg.train
    vector = chunk_settings(exp)
    if vector is None:
        raise ValueError("the floor needs runtime.vectorize=auto or true (the chunks it times)")
    steps = {c: planned_steps(exp.fd.train_size(c), epochs=tr.epochs, steps=tr.steps, batch_size=tr.batch_size,
                              work_fraction=1.0) for c in range(cfg.num_clients)}
    ordered = sorted(range(cfg.num_clients), key=lambda c: (steps[c], c))
    chunks = [[ordered[i] for i in part] for part in cut_group(len(ordered), vector.chunk, vector.stacked, workers)]
    work = [sum(steps[c] for c in ch) for ch in chunks]
    return [[chunks[j] for j in js] for js in deal_chunks(work, workers)], vector.stacked


def _layout(params: dict[str, np.ndarray]) -> list[tuple[str, tuple[int, ...], int, int]]:
    out, at = [], 0
    for k, v in params.items():
        if v.dtype != np.float32:
            raise ValueError(f"the floor handles float32 parameters only ({k}: {v.dtype})")
        out.append((k, tuple(v.shape), at, at + v.size))
        at += v.size
    return out


def _worker(conn: Connection, conf_dir: str, overrides: list[str], chunks: list[list[int]], stacked: bool,
            shm_in: str, shm_out: str) -> None:
    import torch

    from fedagg.experiment import build
    from fedagg.task.cohort import Member, train_cohort
    from fedagg.task.train import get_params, set_params, train_local
    from fedagg.task.work import round_lr

    torch.set_num_threads(1)
    cfg = _compose(conf_dir, overrides)
    exp = build(cfg)
    tr = cfg.train
    model = exp.model()
    start = exp.init_params(0)
    lay = _layout(start)
    size = lay[-1][3]
    gin, gout = SharedMemory(shm_in), SharedMemory(shm_out)
    vin = np.ndarray((size,), np.float32, gin.buf)
    vout = np.ndarray((cfg.num_clients, size), np.float32, gout.buf)
    data = {c: exp.fd.client(c) for ch in chunks for c in ch}
    conn.send("ready")
    while (rnd := conn.recv()) is not None:
        t0 = time.perf_counter()
        glob = {k: vin[a:b].reshape(shape).copy() for k, shape, a, b in lay}
        lr = round_lr(tr.lr, rnd, tr.lr_decay, tr.lr_decay_every)
        for ch in chunks:
            if stacked:
                members = [Member(c, data[c].x_train, data[c].y_train, glob, epochs=tr.epochs, steps=tr.steps)
                           for c in ch]
                trained = [p for p, _ in train_cohort(model, members, batch_size=tr.batch_size, lr=lr,
                                                      momentum=tr.momentum, weight_decay=tr.weight_decay,
                                                      seed=cfg.seed, round=rnd)]
            else:
                trained = []
                for c in ch:
                    set_params(model, glob)
                    train_local(model, data[c].x_train, data[c].y_train, epochs=tr.epochs, steps=tr.steps,
                                batch_size=tr.batch_size, lr=lr, momentum=tr.momentum, weight_decay=tr.weight_decay,
                                seed=cfg.seed, round=rnd, client=c)
                    trained.append(get_params(model))
            for c, p in zip(ch, trained):
                for k, _, a, b in lay:
                    vout[c, a:b] = p[k].reshape(-1)
        conn.send((rnd, time.perf_counter() - t0))
    del vin, vout
    gin.close()
    gout.close()


def run_floor(conf_dir: str, overrides: list[str], workers: int) -> dict[str, Any]:
    """The workload's rounds on ``workers`` bare processes: per round its wall time (training in the workers,
    then averaging and the test evaluation here), the training part, and the final test accuracy."""
    import torch

    from fedagg.experiment import build
    from fedagg.task.train import evaluate, set_params

    cfg = _compose(conf_dir, overrides)
    exp = build(cfg)
    model = exp.model()
    glob = exp.init_params(0)
    lay = _layout(glob)
    size = lay[-1][3]
    per, stacked = plan(cfg, exp, workers)
    n = np.array([exp.fd.train_size(c) for c in range(cfg.num_clients)], dtype=np.float64)
    w32 = (n / n.sum()).astype(np.float32)
    gin = SharedMemory(create=True, size=4 * size)
    gout = SharedMemory(create=True, size=4 * size * cfg.num_clients)
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    env = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})  # one thread per worker, as Ray gives its actors
    try:
        vin = np.ndarray((size,), np.float32, gin.buf)
        vout = np.ndarray((cfg.num_clients, size), np.float32, gout.buf)
        try:
            for chunks in per:
                a, b = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(b, conf_dir, overrides, chunks, stacked, gin.name, gout.name),
                                daemon=True)
                p.start()
                procs.append(p)
                conns.append(a)
        finally:  # the children have their environment: this process's is as it was
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for c in conns:
            assert c.recv() == "ready"
        round_s, train_s, worker_s, acc = [], [], [], 0.0
        for rnd in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            for k, _, a0, b0 in lay:
                vin[a0:b0] = glob[k].reshape(-1)
            for c in conns:
                c.send(rnd)
            got = [c.recv() for c in conns]
            assert all(g[0] == rnd for g in got)
            worker_s.append([g[1] for g in got])
            train_s.append(time.perf_counter() - t0)
            # FedAvg: one weighted sum over the clients' rows, in torch on this process's one thread (numpy's
            # BLAS would start threads of its own that keep spinning while the workers train)
            flat = (torch.from_numpy(w32) @ torch.from_numpy(vout)).numpy()
            glob = {k: flat[a0:b0].reshape(shape) for k, shape, a0, b0 in lay}
            set_params(model, glob)
            _, acc = evaluate(model, exp.x_test, exp.y_test)
            round_s.append(time.perf_counter() - t0)
        for c in conns:
            c.send(None)
        for p in procs:
            p.join(60)
        del vin, vout
        gin.close()
        gout.close()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        gin.unlink()
        gout.unlink()
    return {"round_s": round_s, "train_s": train_s, "worker_s": worker_s, "final_accuracy": float(acc), "stacked": stacked,
            "floor_workers": workers, "chunks": [len(ch) for chunks in per for ch in chunks]}
