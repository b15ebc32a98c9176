"""Every conf file of the dataset / partition / noise / participation /
heterogeneity groups is a flat mapping whose ``name`` is registered and whose
options the component accepts."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedagg.config import CONF_DIR
from fedagg.data import datasets, partition
from fedagg.data.federated import NoiseSpec
from fedagg.env import heterogeneity, participation

CONF = Path(CONF_DIR)


def files(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def load(path: Path) -> dict:
    d = yaml.safe_load(path.read_text())
    assert isinstance(d, dict) and "name" in d, path
    assert all(not isinstance(v, dict) for v in d.values()), f"{path} must be flat"
    # a file is either the entry itself or a named variant of a registered entry
    # (e.g. partition/niid1.yaml = dirichlet with FedDisco's settings); the name
    # must be registered -- each test below builds it
    assert isinstance(d["name"], str) and d["name"], path
    return d


@pytest.mark.parametrize("path", files("dataset"), ids=lambda p: p.stem)
def test_dataset_conf(path):
    d = load(path)
    assert d["name"] in datasets.available()
    params = inspect.signature(datasets._LOADERS.get(d["name"])).parameters
    assert set(d) - {"name"} <= set(params)


@pytest.mark.parametrize("path", files("partition"), ids=lambda p: p.stem)
def test_partition_conf(path):
    d = load(path)
    labels = np.repeat(np.arange(10), 100)
    groups = np.repeat(np.arange(10), 100)
    opts = {k: v for k, v in d.items() if k != "name"}
    parts = partition.partition(d["name"], labels, 10, seed=0, groups=groups, **opts)
    assert len(parts) == 10


@pytest.mark.parametrize("path", files("noise"), ids=lambda p: p.stem)
def test_noise_conf(path):
    d = load(path)
    spec = NoiseSpec.from_spec({f"noise.{k}": v for k, v in d.items()})
    assert spec.kind == d["kind"] == d["name"]


@pytest.mark.parametrize("path", files("participation"), ids=lambda p: p.stem)
def test_participation_conf(path, tmp_path):
    d = load(path)
    opts = {k: v for k, v in d.items() if k != "name"}
    if d["name"] == "trace":
        (tmp_path / "t.csv").write_text("1,0\n")
        opts["path"] = str(tmp_path / "t.csv")
    dists = np.full((10, 10), 0.1)
    p = participation.build_participation(d["name"], 10, 0, dists, **opts)
    assert p.available(1).shape == (10,) and p.probs.shape == (10,)


@pytest.mark.parametrize("path", files("heterogeneity"), ids=lambda p: p.stem)
def test_heterogeneity_conf(path):
    d = load(path)
    h = heterogeneity.build_heterogeneity(d["name"], 10, 0, **{k: v for k, v in d.items() if k != "name"})
    assert isinstance(h.plan(1, 0), dict)
