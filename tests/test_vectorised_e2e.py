"""runtime.vectorize: the vectorised cohort path ends with the per-client
path's parameters (<= 1e-5) and metrics, for every aggregator family,
heterogeneity and FedProx; the same on Ray with 1 or 2 workers (bitwise)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from fedagg_testing import SMALL, compose

from fedagg.experiment import ConfigError, run

TOL = 1e-5


def _run(tmp: Path, name: str, *overrides: str) -> tuple[dict[str, torch.Tensor], list[dict[str, str]]]:
    out = tmp / name
    run(compose(*SMALL, "runtime=inprocess", *overrides), out)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return torch.load(out / "model.pt"), rows


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _same_metrics(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    for ra, rb in zip(a, b, strict=True):
        for col in ("clients_asked", "clients_replied", "clients_failed", "clients_rejected"):
            assert ra[col] == rb[col], (col, ra, rb)
        for col in ("train_loss", "test_accuracy", "test_loss"):
            if ra[col]:
                assert abs(float(ra[col]) - float(rb[col])) <= TOL, (col, ra[col], rb[col])


@pytest.mark.parametrize("overrides", [
    ("aggregator=fedavg", "heterogeneity=stragglers", "heterogeneity.rate=0.5"),
    ("aggregator=fedau", "participation=bernoulli", "heterogeneity=dropouts", "heterogeneity.rate=0.3"),
    ("aggregator=feddisco", "aggregator.proximal_mu=0.1", "heterogeneity=crashes", "heterogeneity.rate=0.3"),
    ("aggregator=fedlaw", "heterogeneity=epochs", "heterogeneity.max=3", "train.weight_decay=0.001"),
    ("aggregator=ida", "train.steps=5", "train.proximal_mu=0.05"),
    ("aggregator=gossip", "heterogeneity=stragglers", "heterogeneity.rate=0.5", "heterogeneity.mode=drop"),
])
def test_vectorised_equals_per_client(tmp_path, overrides):
    pa, ma = _run(tmp_path, "plain", "runtime.vectorize=false", *overrides)
    pb, mb = _run(tmp_path, "vec", "runtime.vectorize=true", "runtime.cohort_chunk=4", *overrides)
    assert _max_diff(pa, pb) <= TOL
    _same_metrics(ma, mb)


def test_vectorised_cnn1d_on_mnist1d(tmp_path):
    common = ("dataset=mnist1d", "model=cnn1d", "model.channels=8", "num_clients=5", "rounds=2",
              "train.epochs=1", "heterogeneity=stragglers", "heterogeneity.rate=0.4")
    pa, ma = _run(tmp_path, "plain", "runtime.vectorize=false", *common)
    pb, mb = _run(tmp_path, "vec", "runtime.vectorize=true", *common)
    assert _max_diff(pa, pb) <= TOL
    _same_metrics(ma, mb)


def test_vectorize_true_refuses_batchnorm(tmp_path):
    with pytest.raises(ConfigError, match="runtime.vectorize=true.*BatchNorm"):
        run(compose("dataset=mnist1d", "model=cnn1d", "model.batch_norm=true", "runtime=inprocess",
                    "runtime.vectorize=true", "rounds=1", "num_clients=2"), tmp_path)


def test_vectorize_auto_falls_back_for_batchnorm(tmp_path, caplog, monkeypatch):
    from fedagg.task import cohort

    monkeypatch.setattr(cohort, "_LOGGED", set())  # said once per process: earlier tests may have said it
    caplog.set_level("INFO", logger="fedagg")
    rows = run(compose("dataset=mnist1d", "model=cnn1d", "model.batch_norm=true", "model.channels=4",
                       "runtime=inprocess", "rounds=1", "num_clients=3", "train.epochs=1"), tmp_path)
    assert rows[0]["clients_replied"] == 3  # trained client by client
    assert sum("BatchNorm" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("bad", ["runtime.vectorize=maybe", "runtime.cohort_chunk=0"])
def test_bad_vector_settings(tmp_path, bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        run(compose(*SMALL, "runtime=inprocess", bad), tmp_path)


def test_auto_trains_2d_convolutions_client_by_client_and_true_stacks_them(tmp_path, caplog, monkeypatch):
    """Stacked 2-D convolutions are slower than one client at a time on CPU (scripts/bench_cohort.py), so
    auto leaves them client by client -- bitwise the per-client run -- while true still stacks them."""
    from fedagg.task import cohort

    monkeypatch.setattr(cohort, "_LOGGED", set())  # said once per process: earlier tests may have said it
    caplog.set_level("INFO", logger="fedagg")
    # a few steps only: over a whole epoch of real digits a 2-D ReLU CNN is chaotic -- a 1e-7 nudge of the
    # starting parameters moves one client's result by up to 1e-2 -- so no two paths agree there to 1e-5
    common = ("dataset=mnist_5k", "model=cnn", "num_clients=4", "rounds=1", "train.steps=4", "train.lr=0.05")
    pa, ma = _run(tmp_path, "plain", "runtime.vectorize=false", *common)
    pb, mb = _run(tmp_path, "auto", "runtime.vectorize=auto", *common)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert [r | {"round_seconds": ""} for r in ma] == [r | {"round_seconds": ""} for r in mb]
    assert sum("Conv2d layers, which train slower stacked" in r.getMessage() for r in caplog.records) == 1
    pc, mc = _run(tmp_path, "true", "runtime.vectorize=true", *common)
    assert 0 < _max_diff(pa, pc) <= TOL  # stacked: equal to rounding, not bit for bit
    _same_metrics(ma, mc)
