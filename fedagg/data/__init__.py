"""Datasets, partitions, federated shards. Importing the package registers every
built-in dataset, the Hub and LEAF ones (:mod:`fedagg.data.hub`) included."""
from . import datasets, hub  # noqa: F401
