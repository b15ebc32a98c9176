"""Datasets, partitions, federated shards. Importing the package registers every
built-in dataset (the Hub and LEAF ones in :mod:`fedagg.data.hub`) and the
flwr-datasets partitioners (:mod:`fedagg.data.flwr_partitions`)."""
from . import datasets, flwr_partitions, hub  # noqa: F401
