"""flwr-datasets' label partitioners as fedagg partitions, for results comparable
with Flower baselines. fedagg's own ``dirichlet`` / ``shards`` stay the default:
they follow the papers' official code draw for draw; these follow Flower's.

==================  ===============================================================================
name                flwr-datasets partitioner
==================  ===============================================================================
flwr_dirichlet      ``DirichletPartitioner(partition_by=label, alpha, min_partition_size=min_size,
                    self_balancing)``: per class Dir(α·1_N), resampled until every client has
                    ``min_size`` samples
flwr_pathological   ``PathologicalPartitioner(num_classes_per_partition=classes_per_client,
                    class_assignment_mode=assignment)``: each client sees only k classes
==================  ===============================================================================

The partitioner's seed is drawn from fedagg's named stream ``(seed, "partition")``,
so the same config and seed give the same clients.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .partition import register_partition


def _run(partitioner: Any, labels: np.ndarray, n: int) -> list[np.ndarray]:
    import datasets as hf

    hf.disable_progress_bars()
    ds = hf.Dataset.from_dict({"label": labels.astype(np.int64), "row": np.arange(len(labels), dtype=np.int64)})
    partitioner.dataset = ds
    return [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64) for i in range(n)]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**32 - 1))


@register_partition("flwr_dirichlet")
def flwr_dirichlet(
    labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float = 0.5, min_size: int = 10,
    self_balancing: bool = False,
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"partition.alpha={alpha} must be a finite number > 0")
    p = DirichletPartitioner(n, "label", alpha, min_partition_size=int(min_size), self_balancing=bool(self_balancing),
                             shuffle=True, seed=_seed(rng))
    try:
        return _run(p, labels, n)
    except ValueError as e:
        raise ValueError(f"partition=flwr_dirichlet (alpha={alpha}, min_size={min_size}): {e}") from e


@register_partition("flwr_pathological")
def flwr_pathological(
    labels: np.ndarray, n: int, rng: np.random.Generator, classes_per_client: int = 2,
    assignment: Literal["random", "deterministic", "first-deterministic"] = "random",
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import PathologicalPartitioner

    modes = ("random", "deterministic", "first-deterministic")
    if assignment not in modes:
        raise ValueError(f"partition.assignment='{assignment}' is not one of {', '.join(modes)}")
    k = int(classes_per_client)
    if not 1 <= k <= len(np.unique(labels)):
        raise ValueError(f"partition.classes_per_client={k} must be in 1..{len(np.unique(labels))}")
    p = PathologicalPartitioner(n, "label", k, class_assignment_mode=assignment, shuffle=True,
                                seed=_seed(rng))
    return _run(p, labels, n)
