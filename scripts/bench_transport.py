"""A chunk reply's way back through Ray: Arrays pickled in band vs out of band (``runtime=ray``'s transport).

A fedagg Ray worker answers a call with one chunk reply per chunk: the chunk's trained parameters stacked
along a client axis, as Flower ``Array`` bytes. This script times that way back alone, for a model of the
registry: one Ray actor builds ``--chunks`` chunk replies of ``--chunk`` clients each (the reply a stacked
chunk sends: :func:`fedagg.flower.chunk.reply`), returns them, and the driver decodes them as fedagg's strategy
does (:func:`fedagg.flower.chunk.decode`). It alternates, call by call, between Ray's default pickling (an
Array's ``bytes`` copied into the pickle, then out of it) and :func:`fedagg.runtime.ray_grid.array_transport`
(an Array of 1 MiB or more handed to Ray's object store as an out-of-band buffer, read back without a copy),
in one process on both sides, and prints the median per call of each with the ratio.

    python scripts/bench_transport.py                          # resnet20 (CIFAR shapes), 5 chunks of 10
    python scripts/bench_transport.py --model resnet18 --chunks 2
    python scripts/bench_transport.py --model mlp --input 40 --classes 10   # MNIST-1D's MLP: 20 KB a client
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


class Replier:
    """The worker side: ``chunks`` chunk replies of ``chunk`` clients of ``model``."""

    def __init__(self, model: str, input_shape: tuple[int, ...], classes: int, chunk: int) -> None:
        import numpy as np
        import torch
        from flwr.app import ConfigRecord, Message, RecordDict

        from fedagg.flower import chunk as wire
        from fedagg.runtime.inprocess import set_task_identity
        from fedagg.task.models import build_model
        from fedagg.task.train import get_params

        torch.set_num_threads(1)
        set_task_identity()
        torch.manual_seed(0)
        base = get_params(build_model(model, input_shape, classes))
        r = np.random.default_rng(0)
        self.rows = [wire.Trained(j, {k: (v + r.normal(0, 0.01, v.shape)).astype(v.dtype) for k, v in base.items()},
                                  96, 1.0, 0.5, 3, np.ones(classes, dtype=np.int64)) for j in range(chunk)]
        self.ids = [f"m{j}" for j in range(chunk)]
        self.request = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type=wire.MESSAGE_TYPE)
        self.bytes_per_client = sum(v.nbytes for v in base.values())

    def size(self) -> int:
        return self.bytes_per_client

    def sent(self) -> list:
        return [r.params for r in self.rows]

    def transport(self, on: bool) -> None:
        from fedagg.runtime.ray_grid import use_array_transport

        use_array_transport(on)

    def replies(self, chunks: int) -> list:
        from fedagg.flower import chunk as wire

        return [wire.reply(self.request, self.ids, self.rows) for _ in range(chunks)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--input", type=int, nargs="+", default=[3, 32, 32], help="the model's input shape")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=10, help="clients per chunk (runtime.cohort_chunk)")
    ap.add_argument("--chunks", type=int, default=5, help="chunk replies per call (a worker's share of a round)")
    ap.add_argument("--calls", type=int, default=30, help="calls in all, alternating the two ways")
    args = ap.parse_args()

    import numpy as np
    import ray

    from fedagg.config import RuntimeConfig
    from fedagg.flower import chunk as wire
    from fedagg.runtime.ray_grid import init_ray, use_array_transport

    init_ray(RuntimeConfig(num_cpus=2))  # a local instance on 127.0.0.1
    actor = ray.remote(Replier).options(num_cpus=1).remote(args.model, tuple(args.input), args.classes, args.chunk)
    per_client = ray.get(actor.size.remote())
    sent = ray.get(actor.sent.remote())
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.calls + 2):
        on = bool(i % 2)
        ray.get(actor.transport.remote(on))
        use_array_transport(on)
        t0 = time.perf_counter()
        decoded = [wire.decode(msg) for msg in ray.get(actor.replies.remote(args.chunks))]
        if i >= 2:  # the first call of each way warms up
            times[on].append(time.perf_counter() - t0)
        else:  # and is checked: every client's parameters arrive as they were sent
            for d in decoded:
                for j, p in enumerate(sent):
                    if not all(np.array_equal(d.params[k][j], v) for k, v in p.items()):
                        raise SystemExit(f"bench_transport: client {j}'s parameters changed on the way back")
    use_array_transport(False)
    mb = per_client * args.chunk * args.chunks / 1e6
    print(f"# bench_transport: {args.model}, {per_client / 1e6:.3f} MB a client, {args.chunks} chunk replies of "
          f"{args.chunk} clients a call ({mb:.1f} MB), {args.calls // 2} calls each way, alternated; "
          f"load average {os.getloadavg()}")
    print("| way back | median ms a call (build replies, Ray, decode) | MB/s |")
    print("|---|---|---|")
    med = {on: statistics.median(ts) for on, ts in times.items()}
    for on, label in ((False, "in band (Ray's default pickling)"), (True, "out of band (array_transport)")):
        print(f"| {label} | {1e3 * med[on]:.1f} | {mb / med[on]:.0f} |")
    print(f"out of band / in band: {med[True] / med[False]:.2f} (every client's parameters checked equal both ways)")
    ray.shutdown()


if __name__ == "__main__":
    main()
