#!/usr/bin/env python
"""Runtime benchmark: the same workload on every runtime, side by side.

Workload: MNIST-1D, 1-D CNN (``--model mlp``: the MLP; ``--model cnn``: the
2-D simple-cnn on ``mnist_5k``'s real 28x28 digits), 1 local epoch, full
participation of ``--clients`` clients per round (default 10 and 100),
``--rounds`` rounds (default 10), FedAvg, server-side evaluation every
round. Variants:

  plain          a plain in-process PyTorch loop, no FL machinery: the same
                 ``fedagg.task.train.train_local`` per client + FedAvg
                 averaging (the per-client lower bound)
  ray            runtime=ray, client by client (runtime.vectorize=false)
  ray-vec        runtime=ray, vectorize=auto (the default): chunks of clients, one
                 message and one reply each, trained stacked (one by one for the
                 models auto does not stack, e.g. the 2-D CNNs on CPU)
  flower         runtime=flower (Flower's simulation engine)
  inprocess      runtime=inprocess, client by client
  inprocess-vec  runtime=inprocess, vectorize=auto (chunks, as ray-vec)
  floor          the two-worker floor (``scripts/bench_floor.py``): the same
                 clients in ray-vec's chunks, trained by two bare processes
                 (shared memory, no Ray, no Flower, no fedagg runtime), then
                 FedAvg and the test evaluation in the parent; "x floor" =
                 a two-worker variant's round / this one (1.0 = its machinery
                 costs nothing)
  floor-1        the same on one bare process (floor-1 / floor = what a second
                 worker buys on this machine)

Beside each ratio the table prints the compute ceiling of that variant: the
cohort's training alone, relative to one by one on one thread
(``scripts/bench_cohort.py``'s stacked ratio, measured here on the
workload's shard sizes), divided by the variant's workers -- for a model
``runtime.vectorize=auto`` trains client by client (the 2-D CNNs on CPU) the
ceiling is 1 / workers. "x ceiling" = ratio / ceiling (1.0 = nothing but the
clients' compute). That ceiling is measured on equal shards of the mean size;
"x own-shard ceiling" uses the same measurement on the run's own (unequal)
shards in the runtime's chunks, where a stacked chunk steps as long as its
largest member and every client's last, partial batch costs a full stacked
step (measured only for a model ``auto`` stacks). ``--no-ceiling`` skips both.

``--async`` instead runs the asynchronous modes beside a synchronous run
on the same model, runtime and device profile (``device_profile=lognormal``,
``--async-runtime``, default ray-vec): ``sync`` (``--rounds`` rounds of all
``--clients``), ``fedasync`` (``--rounds`` x clients updates, concurrency =
clients), ``fedbuff`` (K = clients / 2, ``--rounds`` x 2 updates) and
``fedfix`` (``--window`` simulated seconds, ``--rounds`` updates). Per
variant: client jobs trained and updates applied per real second (over the
update loop, server evaluation included; and without it: the time the
run spent loading the server's model and scoring it on the test set, timed
where it ran, subtracted) and the event loop's own cost per server
update (``Schedule.advance`` + the server step on the run's model, timed
alone on the run's clock).

``--population 1000 1000000`` instead sweeps the number of registered
clients (``dataset=synthetic partition=natural``, 10 samples per user on
average, the MLP, 100 clients per round, test set = the first 1,000
users' test samples) on ``--pop-variants`` (default ray-vec): start-up,
steady round and peak tree RSS per population.

Each variant runs in its own subprocess; the parent samples the RSS of the
whole process tree (Ray daemons and workers included) every 0.1 s.

    python scripts/bench_runtime.py                 # 10 and 100 clients, 10 rounds
    python scripts/bench_runtime.py --quick         # 10 clients, 3 rounds
    python scripts/bench_runtime.py --clients 100 --rounds 12 --variants plain,ray
    python scripts/bench_runtime.py --clients 100 --variants plain,ray-vec,flower,inprocess-vec
    python scripts/bench_runtime.py --population 1000 10000 100000 1000000
    python scripts/bench_runtime.py --scaling       # ray, 1 vs 2 workers, compute-bound
    python scripts/bench_runtime.py --async --clients 10 --rounds 5 --model mlp   # async vs sync
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 ray start --head --port 6379 \
        --num-cpus 2 --include-dashboard=false --node-ip-address 127.0.0.1
    python scripts/bench_runtime.py --address 127.0.0.1:6379 --variants ray --clients 10 --rounds 3
    ray stop

Columns: start-up = wall time of the run after imports minus the time spent
in rounds and, for ``runtime=ray``, minus Ray's teardown (``ray_grid.shutdown``,
timed on its own and shown as "teardown"): data, Ray start, workers, connect,
and the run's final writes (an upper bound of the time to the first round;
Flower's simulation tears down inside the run, so its start-up includes its
teardown); steady round =
median of rounds >= 2 (with ``--repeats N``, of every repeat's: the variant
list runs N times, interleaved, since this machine's speed drifts by up to
1.7x between runs minutes apart); ratio = steady round / the plain loop's;
updates/s = clients per round / steady round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "fedagg" / "conf"


DATASET = {"cnn1d": "mnist1d", "mlp": "mnist1d", "cnn": "mnist_5k"}


def overrides(clients: int, rounds: int, extra: list[str], model: str = "cnn1d") -> list[str]:
    return [f"dataset={DATASET[model]}", f"model={model}", "aggregator=fedavg", "participation=full", "heterogeneity=none",
            f"num_clients={clients}", f"rounds={rounds}", "train.epochs=1", "seed=0", *extra]


def population_overrides(population: int, rounds: int, per_round: int = 100) -> list[str]:
    """``population`` registered clients (synthetic users, generated when asked), ``per_round`` asked per round."""
    return ["dataset=synthetic", f"dataset.num_users={population}", f"dataset.num_samples={10 * population}",
            "dataset.test_users=1000", "partition=natural", f"num_clients={population}", "model=mlp",
            "participation=uniform", f"participation.fraction={per_round / population!r}", "aggregator=fedavg",
            "heterogeneity=none", f"rounds={rounds}", "train.epochs=1", "seed=0"]


VARIANT_OVERRIDES = {
    "plain": [], "ray": ["runtime=ray", "runtime.vectorize=false"], "ray-vec": ["runtime=ray", "runtime.vectorize=auto"],
    "flower": ["runtime=flower"], "inprocess": ["runtime=inprocess", "runtime.vectorize=false"],
    "inprocess-vec": ["runtime=inprocess", "runtime.vectorize=auto"], "ceiling": [], "floor": [], "floor-1": [],
}
ASYNC_VARIANTS = ("sync", "fedasync", "fedbuff", "fedfix")


def async_overrides(variant: str, clients: int, window_s: float) -> list[str]:
    """The asynchronous benchmark's variant on top of the runtime's overrides."""
    out = ["device_profile=lognormal", f"server.mode={variant}"]
    if variant != "sync":
        out.append(f"server.concurrency={clients}")
    if variant == "fedbuff":
        out.append(f"server.buffer_size={max(1, clients // 2)}")
    if variant == "fedfix":
        out.append(f"server.window_s={window_s}")
    return out


def event_loop_cost(cfg, updates: int) -> dict:
    """The asynchronous loop's own cost per server update, without training or evaluation: the schedule on the
    run's clock, and the server step on the run's model with synthetic arrived updates."""
    import numpy as np

    from fedagg.aggregators.asynchronous import Applied
    from fedagg.aggregators.base import ClientUpdate, RoundInfo
    from fedagg.experiment import build
    from fedagg.server import make_async_loop, make_strategy

    exp = build(cfg)
    loop = make_async_loop(exp, make_strategy(exp))
    t0 = time.perf_counter()
    steps = [loop.schedule.advance() for _ in range(updates)]
    sched_s = time.perf_counter() - t0
    x = exp.init_params(0)
    r = np.random.default_rng(0)
    theta = {k: (v + r.normal(0, 0.01, v.shape)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in x.items()}
    t0 = time.perf_counter()
    for st in steps:
        items = [Applied(ClientUpdate(j.client, theta, 10), x, st.staleness(j), j.duration_s) for j in st.applied]
        info = RoundInfo(st.version, cfg.num_clients, tuple(sorted({j.client for j in st.applied})),
                         tuple(j.client for j in st.applied))
        x = loop.step.apply(x, items, info)[0]
    step_s = time.perf_counter() - t0
    return {"schedule_us_per_update": 1e6 * sched_s / updates, "step_us_per_update": 1e6 * step_s / updates}


# --------------------------------------------------------------------------- worker side
def _timed(fn, spent: list[float]):
    """``fn``, adding the seconds each call takes to ``spent[0]``."""
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t0
    return wrapper


def worker(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir

    from fedagg.experiment import build, run

    logging.basicConfig(level=logging.WARNING)
    # one thread per training process, as in every runtime=ray actor (num_cpus_per_client=1): the same
    # per-client compute everywhere, and no OpenMP oversubscription on a shared machine
    torch.set_num_threads(args.threads)
    extra = list(args.override or [])
    if args.population:
        base = population_overrides(args.population, args.rounds)
    else:
        base = overrides(args.clients, args.rounds, [], args.model)
    if args.variant in ASYNC_VARIANTS:
        variant_overrides = [*VARIANT_OVERRIDES[args.async_runtime], *async_overrides(args.variant, args.clients,
                                                                                         args.window)]
    else:
        variant_overrides = VARIANT_OVERRIDES[args.variant]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*base, *variant_overrides, *extra])
    t0 = time.perf_counter()
    imports_s = t0 - t_start
    info: dict = {}
    if args.variant == "ceiling":  # the cohort's training alone: stacked vs one by one (bench_cohort.py)
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_cohort import measure, measure_on

        from fedagg.task.cohort import slower_reason

        exp = build(cfg)
        samples = round(sum(exp.fd.train_size(c) for c in range(cfg.num_clients)) / cfg.num_clients)
        chunk = int(cfg.runtime.cohort_chunk)
        one, stacked = measure(args.model, cfg.num_clients, samples, chunk, 3)
        res = {"one_by_one_s": one, "stacked_s": stacked, "stacked_ratio": stacked / one, "samples": samples,
               "chunk": chunk, "auto_stacks": slower_reason(exp.model()) is None}
        if res["auto_stacks"]:  # the same on the run's own shards (a model trained one by one has ceiling 1)
            own = [(d.x_train, d.y_train) for d in map(exp.fd.client, range(cfg.num_clients))]
            own_one, own_stacked = measure_on(args.model, own, chunk, 3)
            res |= {"own_one_by_one_s": own_one, "own_stacked_s": own_stacked, "own_ratio": own_stacked / own_one}
        res["load"] = os.getloadavg()
        Path(args.result).write_text(json.dumps(res))
        return
    if args.variant in ("floor", "floor-1"):  # the round on bare processes (bench_floor.py)
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_floor import run_floor

        workers = 1 if args.variant == "floor-1" else min(2, os.cpu_count() or 1)
        res = run_floor(str(CONF_DIR), [*base, *extra], workers)
        wall = time.perf_counter() - t0
        res |= {"imports_s": imports_s, "wall_s": wall, "startup_s": wall - sum(res["round_s"]),
                "torch_threads": torch.get_num_threads()}
        Path(args.result).write_text(json.dumps(res))
        return
    if args.variant == "plain":
        from fedagg.task.train import evaluate, get_params, set_params, train_local

        exp = build(cfg)
        c = exp.cfg
        tr = c.train
        model = exp.model()
        glob = exp.init_params(0)
        secs, rows, train_secs = [], [], []
        for rnd in range(1, c.rounds + 1):
            r0 = time.perf_counter()
            ups, ns = [], []
            for cid in range(c.num_clients):
                d = exp.fd.client(cid)
                set_params(model, glob)
                train_local(model, d.x_train, d.y_train, epochs=tr.epochs, steps=tr.steps,
                            batch_size=tr.batch_size, lr=tr.lr, momentum=tr.momentum,
                            weight_decay=tr.weight_decay, seed=c.seed, round=rnd, client=cid)
                ups.append(get_params(model))
                ns.append(len(d.y_train))
            train_secs.append(time.perf_counter() - r0)  # the rest: averaging and the test evaluation
            w = np.asarray(ns, dtype=np.float64) / sum(ns)
            glob = {k: sum(wi * u[k] for wi, u in zip(w, ups)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating)
                    else ups[int(np.argmax(w))][k] for k, v in glob.items()}
            set_params(model, glob)
            loss, acc = evaluate(model, exp.x_test, exp.y_test)
            secs.append(time.perf_counter() - r0)
            rows.append({"test_accuracy": acc})
        info["train_s"] = train_secs
    else:
        spent = [0.0]  # the server's evaluation inside the run: loading the model and scoring it, timed where it runs
        if args.variant in ASYNC_VARIANTS:
            from fedagg.server import ServerEvaluation

            ServerEvaluation.params = _timed(ServerEvaluation.params, spent)
        with tempfile.TemporaryDirectory(prefix="fedagg_bench") as out:
            rows = run(cfg, out)
            info["eval_total_s"] = spent[0]
            trained: list[int] = []  # the jobs trained (an asynchronous job trains when it is due: not at the end)
            if args.variant in ASYNC_VARIANTS and (Path(out) / "rounds.jsonl").exists():
                lines = (Path(out) / "rounds.jsonl").read_text().splitlines()
                trained = [d["async"]["trained"] for d in map(json.loads, lines) if "async" in d]
        secs = [r["round_seconds"] for r in rows]
        if args.variant in ASYNC_VARIANTS:
            info["updates"] = len(rows)
            info["applied"] = sum(int(r["clients_replied"]) for r in rows)
            info["trained"] = sum(trained) if trained else info["applied"]
            if args.variant != "sync":
                info.update(event_loop_cost(cfg, len(rows)))
        if args.variant.startswith("ray"):
            from fedagg.runtime import ray_grid

            t_sd = time.perf_counter()
            ray_grid.shutdown()
            info["shutdown_s"] = time.perf_counter() - t_sd
    wall = time.perf_counter() - t0
    res = {"imports_s": imports_s, "wall_s": wall, "round_s": secs,
           "startup_s": wall - sum(secs) - info.get("shutdown_s", 0.0),
           "final_accuracy": rows[-1]["test_accuracy"], "torch_threads": torch.get_num_threads(), **info}
    Path(args.result).write_text(json.dumps(res))


# --------------------------------------------------------------------------- parent side
def tree_rss(pid: int) -> int:
    try:
        import psutil

        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total
    except ImportError:  # /proc fallback: walk children via /proc/*/stat
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(d))
                except OSError:
                    pass
        todo, total = [pid], 0
        while todo:
            q = todo.pop()
            todo += kids.get(q, [])
            try:
                for line in open(f"/proc/{q}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total
    except Exception:  # noqa: BLE001 - the process ended
        return 0


THREADS = 1


def run_variant(variant: str, clients: int, rounds: int, extra: list[str], timeout: float, model: str = "cnn1d",
                population: int = 0, async_runtime: str = "ray-vec", window: float = 2.0) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    cmd = [sys.executable, __file__, "--worker", variant, "--clients", str(clients), "--rounds", str(rounds),
           "--result", result, "--threads", str(THREADS), "--model", model, "--population-worker", str(population),
           "--async-runtime", async_runtime, "--window", str(window)]
    cmd += [f"--override={o}" for o in extra]
    env = dict(os.environ)
    env.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="fedagg_ray", dir="/tmp"))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_rss(p.pid))
        if time.perf_counter() - t0 > timeout:
            p.kill()
            break
        time.sleep(0.1)
    out = p.stdout.read() if p.stdout else ""
    try:
        res = json.loads(Path(result).read_text())
    except (OSError, json.JSONDecodeError):
        res = {"error": out[-2000:]}
    finally:
        Path(result).unlink(missing_ok=True)
    res["peak_rss_mb"] = peak / 2**20
    res["process_s"] = time.perf_counter() - t0
    return res


WORKERS = {"plain": 1, "inprocess": 1, "inprocess-vec": 1, "ray": 2, "ray-vec": 2, "flower": 2, "floor": 2,
           "floor-1": 1}


def ceiling_of(variant: str, c: dict | None, workers: int, key: str = "stacked_ratio") -> float | None:
    """The variant's compute ceiling as a ratio to the one-thread plain loop (None: unknown); ``key``:
    ``stacked_ratio`` (equal shards of the mean size: the issue's ceiling) or ``own_ratio`` (the run's shards)."""
    if c is None or "error" in c or variant not in WORKERS:
        return None
    stacked = (variant.endswith("-vec") or variant.startswith("floor")) and c["auto_stacks"]
    per = c[key] if stacked else 1.0  # own_ratio is measured only where auto stacks
    return per / (1 if WORKERS[variant] == 1 else workers)


def merge_repeat(results: dict[tuple[int, str], dict], key: tuple[int, str], r: dict) -> None:
    """A repeat of a variant (``--repeats``): its steady rounds join the earlier ones', so the table's median
    runs over every repeat's rounds >= 2 (a failed repeat fails the variant)."""
    old = results.get(key)
    if old is None or ("error" in r and "error" not in old):
        results[key] = r
        return
    if "error" in old or "error" in r:
        return
    for k in ("round_s", "train_s"):
        if k in old:
            old[k] += r[k][1:]
    old["repeats"] = old.get("repeats", 1) + 1


def table(results: dict[tuple[int, str], dict], first: str = "clients/round", per_round: int | None = None,
          base_key: str = "plain", ceilings: dict[int, dict] | None = None, workers: int = 2) -> str:
    lines = [f"| {first} | variant | start-up s | teardown s | median steady round s | ratio to {base_key} | "
             "ceiling | x ceiling | x own-shard ceiling | x floor | updates/s | peak RSS MB (tree) | final acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        if "error" not in r:
            r["steady_s"] = statistics.median(r["round_s"][1:]) if len(r["round_s"]) > 1 else r["round_s"][0]
    for (clients, variant), r in results.items():
        if "error" in r:
            why = r["error"].strip().splitlines()[-1][:80] if r["error"].strip() else "?"
            lines.append(f"| {clients} | {variant} | failed: {why} | | | | | | | | | | |")
            continue
        steady = r["steady_s"]
        base = results.get((clients, base_key), {}).get("steady_s") if base_key == "plain" else \
            next((v.get("steady_s") for (c, vv), v in results.items() if vv == variant), None)
        ratio = f"{steady / base:.2f}" if base else "n/a"
        down = f"{r['shutdown_s']:.2f}" if "shutdown_s" in r else "—"
        cr = (ceilings or {}).get(clients)
        ceil = ceiling_of(variant, cr, workers)
        cs = f"{ceil:.2f}" if ceil is not None else "—"
        xs = f"{steady / base / ceil:.2f}" if (ceil and base) else "—"
        own = ceiling_of(variant, cr, workers, "own_ratio")
        xo = f"{steady / base / own:.2f}" if (own and base) else "—"
        floor = results.get((clients, "floor"), {}).get("steady_s")
        xf = f"{steady / floor:.2f}" if (floor and WORKERS.get(variant) == 2) else "—"
        lines.append(f"| {clients} | {variant} | {r['startup_s']:.2f} | {down} | {steady:.3f} | {ratio} | {cs} | {xs} | {xo} | {xf} | "
                     f"{(per_round or clients) / steady:.0f} | {r['peak_rss_mb']:.0f} | {r['final_accuracy']:.4f} |")
    return "\n".join(lines)


def async_table(results: dict[tuple[int, str], dict], runtime: str) -> str:
    """The --async table: throughput of client jobs and the event loop's cost, beside the synchronous run."""
    lines = [f"| clients | mode ({runtime}) | updates | jobs trained | updates applied | wall of updates s | "
             "jobs/s | jobs/s w/o eval | x sync (w/o eval) | schedule µs/update | server step µs/update | final acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (c, v), r in results.items():
        if "error" in r:
            why = r["error"].strip().splitlines()[-1][:80] if r["error"].strip() else "?"
            lines.append(f"| {c} | {v} | failed: {why} | | | | | | | | | |")
            continue
        wall = sum(r["round_s"])
        no_eval = max(wall - r["eval_total_s"], 1e-9)
        r["jobs_s"], r["jobs_s_no_eval"] = r["trained"] / wall, r["trained"] / no_eval
        base = results.get((c, "sync"), {}).get("jobs_s_no_eval")
        rel = f"{r['jobs_s_no_eval'] / base:.2f}" if base else "n/a"
        sch = f"{r['schedule_us_per_update']:.0f}" if "schedule_us_per_update" in r else "—"
        stp = f"{r['step_us_per_update']:.0f}" if "step_us_per_update" in r else "—"
        lines.append(f"| {c} | {v} | {r['updates']} | {r['trained']} | {r['applied']} | {wall:.2f} | "
                     f"{r['jobs_s']:.1f} | {r['jobs_s_no_eval']:.1f} | {rel} | {sch} | {stp} | "
                     f"{r['final_accuracy']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="*", default=None, help="clients per round (default 10 100)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 10; --quick: 3)")
    ap.add_argument("--variants", default="plain,floor,ray,ray-vec,flower,inprocess,inprocess-vec")
    ap.add_argument("--model", default="cnn1d", choices=sorted(DATASET),
                    help="cnn1d or mlp on MNIST-1D; cnn: the 2-D simple-cnn on mnist_5k")
    ap.add_argument("--no-ceiling", action="store_true", help="skip measuring the compute ceiling")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the variant list this many times, interleaved; the steady round is the median of "
                         "every repeat's rounds >= 2 (the machine's speed drifts between variants minutes apart)")
    ap.add_argument("--population", type=int, nargs="*", default=None,
                    help="registered clients to sweep (synthetic users, 100 per round), e.g. 1000 1000000")
    ap.add_argument("--pop-variants", default="ray-vec", help="variants for --population (default ray-vec)")
    ap.add_argument("--quick", action="store_true", help="10 clients, 3 rounds")
    ap.add_argument("--scaling", action="store_true", help="ray with 1 vs 2 workers on a compute-bound workload")
    ap.add_argument("--async", dest="asynchronous", action="store_true",
                    help="the asynchronous modes beside a synchronous run (device_profile=lognormal)")
    ap.add_argument("--async-runtime", default="ray-vec", choices=["ray-vec", "ray", "inprocess-vec", "inprocess"],
                    help="the runtime of --async (default ray-vec)")
    ap.add_argument("--window", type=float, default=2.0, help="--async: fedfix's window, simulated seconds")
    ap.add_argument("--address", default=None, help="runtime.address for the ray variant (an existing cluster)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the driver process (plain, inprocess)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--override", action="append", help=argparse.SUPPRESS)
    ap.add_argument("--population-worker", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.variant = args.worker
        args.clients = int(args.clients[0])
        args.population = args.population_worker
        return worker(args)
    global THREADS
    THREADS = args.threads
    clients = args.clients or ([10] if args.quick else [10, 100])
    rounds = args.rounds or (3 if args.quick else 10)
    print(f"# bench_runtime: rounds={rounds}, clients/round={clients}, cores={os.cpu_count()}, "
          f"load average={os.getloadavg()}", flush=True)
    results: dict[tuple[int, str], dict] = {}
    if args.population:
        for n in args.population:
            for v in args.pop_variants.split(","):
                r = run_variant(v, 100, rounds, [], args.timeout, population=n)
                results[(n, v)] = r
                print(f"{n} registered clients, {v}: imports {r.get('imports_s', 0):.1f}s, start-up "
                      f"{r.get('startup_s', 0):.2f}s, rounds {['%.2f' % s for s in r.get('round_s', [])]}, "
                      f"peak RSS {r.get('peak_rss_mb', 0):.0f} MB", flush=True)
        print()
        print(table(results, first="registered clients", per_round=100, base_key="smallest population"))
    elif args.asynchronous:
        for c in clients:
            sched = {"sync": rounds, "fedasync": rounds * c, "fedbuff": rounds * 2, "fedfix": rounds}
            for v in ASYNC_VARIANTS:
                r = run_variant(v, c, sched[v], [], args.timeout, model=args.model, async_runtime=args.async_runtime,
                                window=args.window)
                results[(c, v)] = r
                print(f"{c} clients, {v}: {r.get('updates', '?')} updates, wall of the updates "
                      f"{sum(r.get('round_s', [])):.2f}s; load average {tuple(round(x, 2) for x in os.getloadavg())}",
                      flush=True)
        print()
        print(async_table(results, args.async_runtime))
    elif args.scaling:  # compute-bound: a wide CNN, several epochs, few large clients
        extra = ["model.channels=64", "train.epochs=3", "runtime=ray"]
        for w in (1, 2):
            r = run_variant("ray", 4, rounds, [*extra[:2], f"runtime.num_workers={w}", "runtime.batch_size=auto"],
                            args.timeout)
            results[(4, f"ray num_workers={w}")] = r
            print(f"ray num_workers={w}: rounds {['%.2f' % s for s in r.get('round_s', [])]}", flush=True)
        print(table(results))
        s1 = statistics.median(results[(4, "ray num_workers=1")]["round_s"][1:])
        s2 = statistics.median(results[(4, "ray num_workers=2")]["round_s"][1:])
        print(f"\nspeed-up 2 workers vs 1: {s1 / s2:.2f}x")
    else:
        ceilings: dict[int, dict] = {}
        workers = min(2, os.cpu_count() or 1)
        for c in clients:
            if not args.no_ceiling:
                ceilings[c] = cr = run_variant("ceiling", c, 1, [], args.timeout, model=args.model)
                if "error" not in cr:
                    print(f"{c} clients, compute ceiling: {cr['samples']} samples each, chunks of {cr['chunk']}, one "
                          f"thread: one by one {cr['one_by_one_s']:.3f}s, stacked {cr['stacked_s']:.3f}s "
                          f"(ratio {cr['stacked_ratio']:.2f}; vectorize=auto {'stacks' if cr['auto_stacks'] else 'trains one by one'})"
                          + (f"; on the run's own shards: one by one {cr['own_one_by_one_s']:.3f}s, stacked "
                             f"{cr['own_stacked_s']:.3f}s (ratio {cr['own_ratio']:.2f})" if cr["auto_stacks"] else "")
                          + f"; load average {tuple(round(x, 2) for x in cr['load'])}", flush=True)
            for v in [v for _ in range(args.repeats) for v in args.variants.split(",")]:  # interleaved repeats
                extra = [f"runtime.address={args.address}"] if (v == "ray" and args.address) else []
                r = run_variant(v, c, rounds, extra, args.timeout, model=args.model)
                merge_repeat(results, (c, v), r)
                print(f"{c} clients, {v}: imports {r.get('imports_s', 0):.1f}s, start-up {r.get('startup_s', 0):.2f}s,"
                      f" rounds {['%.2f' % s for s in r.get('round_s', [])]}; load average "
                      f"{tuple(round(x, 2) for x in os.getloadavg())}", flush=True)
                if r.get("train_s"):  # the plain loop: how much of its round is training
                    tr = statistics.median(r["train_s"][1:] or r["train_s"])
                    print(f"{c} clients, {v}: training {tr:.3f}s of the median round (the rest: averaging + test)")
        print()
        print(table(results, ceilings=ceilings, workers=workers))
        for c in clients:
            fl_s = results.get((c, "flower"), {}).get("steady_s")
            for v in ("ray", "ray-vec", "inprocess-vec"):
                v_s = results.get((c, v), {}).get("steady_s")
                if v_s and fl_s:
                    print(f"{c} clients/round: {v} steady round is {fl_s / v_s:.1f}x faster than runtime=flower")
    print(f"# load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
