"""flwr-datasets' partitioners behind fedagg's partition registry: the same
clients as calling Flower's partitioner directly with the seed fedagg draws."""
from __future__ import annotations

import datasets as hf
import numpy as np
import pytest
from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

from fedagg.data.partition import partition
from fedagg.seeding import rng

LABELS = rng(0, "test-labels").permutation(np.repeat(np.arange(10), 200))


def _flower(p, labels):
    p.dataset = hf.Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    return [np.sort(np.asarray(p.load_partition(i)["row"])) for i in range(p.num_partitions)]


def test_flwr_dirichlet_equals_flowers_partitioner_with_the_stream_seed():
    seed = int(rng(7, "partition").integers(0, 2**32 - 1))
    ours = partition("flwr_dirichlet", LABELS, 8, seed=7, alpha=0.3, min_size=5)
    theirs = _flower(DirichletPartitioner(8, "label", 0.3, min_partition_size=5, seed=seed), LABELS)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_flwr_pathological_gives_each_client_k_classes():
    seed = int(rng(2, "partition").integers(0, 2**32 - 1))
    ours = partition("flwr_pathological", LABELS, 10, seed=2, classes_per_client=2)
    assert all(len(np.unique(LABELS[p])) == 2 for p in ours)
    theirs = _flower(PathologicalPartitioner(10, "label", 2, seed=seed), LABELS)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_flwr_partition_bad_options_name_the_key():
    with pytest.raises(ValueError, match="partition.alpha"):
        partition("flwr_dirichlet", LABELS, 8, alpha=0)
    with pytest.raises(ValueError, match="partition.classes_per_client"):
        partition("flwr_pathological", LABELS, 8, classes_per_client=11)
    with pytest.raises(ValueError, match="partition.assignment"):
        partition("flwr_pathological", LABELS, 8, assignment="sorted")
