"""The ``dp`` section: Flower's server- and client-side DP wrappers (and the client-side
clipping mods in fedagg's ClientApp) around every built-in run."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from fedagg_testing import compose
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
)

from fedagg.config import load
from fedagg.deploy_app import compose_config
from fedagg.errors import ConfigError
from fedagg.experiment import run

COMMON = ["dataset=digits", "model=mlp", "num_clients=4", "rounds=2", "participation=full", "runtime=inprocess",
          "train.epochs=1", "train.lr=0.1", "partition.alpha=0.5"]


def _run(tmp_path, name: str, *overrides: str):  # noqa: ANN202
    d = tmp_path / name
    d.mkdir()
    run(compose(*COMMON, *overrides), d)
    with open(d / "metrics.csv") as f:
        return list(csv.DictReader(f)), torch.load(d / "model.pt")


@pytest.mark.parametrize("aggregator", ["fedavg", "fedau", "feddisco"])
def test_server_fixed_dp_reports_its_settings_and_repeats_exactly(tmp_path, aggregator):
    dp = ["dp.mode=server_fixed", "dp.noise_multiplier=0.5", "dp.clipping_norm=0.2", f"aggregator={aggregator}"]
    rows, model = _run(tmp_path, "a", *dp)
    assert [float(r["dp_noise_multiplier"]) for r in rows] == [0.5, 0.5]
    assert [float(r["dp_clipping_norm"]) for r in rows] == [0.2, 0.2]
    assert all(int(r["clients_replied"]) == 4 for r in rows)
    _, again = _run(tmp_path, "b", *dp)  # the noise comes from the named stream ("dp-noise", round)
    assert all(torch.equal(model[k], again[k]) for k in model)
    _, plain = _run(tmp_path, "c", f"aggregator={aggregator}")
    assert any(not torch.equal(model[k], plain[k]) for k in model)  # ... and it is there


def test_server_adaptive_dp_reports_the_clipping_norm_of_each_round(tmp_path):
    rows, _ = _run(tmp_path, "a", "dp.mode=server_adaptive", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05")
    norms = [float(r["dp_clipping_norm"]) for r in rows]
    assert norms[0] != 0.05 and norms[0] != norms[1]  # every update is above 0.05: every one is clipped, the norm moves
    assert float(rows[0]["dp_noise_multiplier"]) > 0


def test_resumed_adaptive_dp_run_equals_the_uninterrupted_one(tmp_path):
    """The adaptive clipping norm survives a resume: 2 rounds + 2 resumed = 4 rounds, bit for bit."""
    dp = ["dp.mode=server_adaptive", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05", "checkpoint.every=1"]
    full_rows, full = _run(tmp_path, "full", *dp, "rounds=4")
    _run(tmp_path, "part", *dp)  # rounds=2
    d = tmp_path / "resumed"
    run(compose(*COMMON, *dp, "rounds=4", f"resume={tmp_path / 'part'}"), d)
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    resumed = torch.load(d / "model.pt")
    assert [r["dp_clipping_norm"] for r in rows] == [r["dp_clipping_norm"] for r in full_rows]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize(("override", "key"), [("dp.mode=local", "dp.mode"), ("dp.clipping_norm=0", "dp.clipping_norm"),
                                               ("dp.noise_multiplier=-1", "dp.noise_multiplier")])
def test_bad_dp_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load(compose(*COMMON, override))


def _watch_updates(monkeypatch, wrapper: type) -> list[tuple[float, float]]:  # noqa: ANN001
    """(the round's clipping norm, each reply's update norm around the global model it was sent), as
    Flower's client-side wrapper sees them: its configure_train and aggregate_train, observed."""
    seen: list[tuple[float, float]] = []
    sent: dict[str, object] = {}
    configure, aggregate = wrapper.configure_train, wrapper.aggregate_train

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN202
        sent.update(norm=self.clipping_norm, arrays=arrays.to_numpy_ndarrays())
        return configure(self, server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN202
        replies = list(replies)
        for r in replies:
            got = r.content.array_records["arrays"].to_numpy_ndarrays()
            norm = np.sqrt(sum(float(np.sum((np.asarray(a, np.float64) - b) ** 2))
                               for a, b in zip(got, sent["arrays"])))
            seen.append((float(sent["norm"]), norm))
        return aggregate(self, server_round, replies)

    monkeypatch.setattr(wrapper, "configure_train", configure_train)
    monkeypatch.setattr(wrapper, "aggregate_train", aggregate_train)
    return seen


@pytest.mark.parametrize("aggregator", ["fedavg", "fedau"])
@pytest.mark.parametrize(("mode", "wrapper"), [("client_fixed", DifferentialPrivacyClientSideFixedClipping),
                                               ("client_adaptive", DifferentialPrivacyClientSideAdaptiveClipping)])
def test_client_side_dp_clips_every_update_reports_its_settings_and_repeats_exactly(tmp_path, monkeypatch, aggregator,
                                                                                    mode, wrapper):
    """Flower's clipping mod runs in fedagg's ClientApp: every update the wrapper receives is at
    most the round's clipping norm around the model it was sent (0.05: below every update, so
    each is cut to it); the default runtime.vectorize=auto falls back to per-client messages."""
    dp = [f"dp.mode={mode}", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05", f"aggregator={aggregator}"]
    seen = _watch_updates(monkeypatch, wrapper)
    rows, model = _run(tmp_path, "a", *dp)
    assert len(seen) == 8  # 4 clients x 2 rounds, each its own train message
    assert all(norm <= clip * (1 + 1e-5) for clip, norm in seen)
    assert all(norm >= clip * (1 - 1e-3) for clip, norm in seen)  # clipped: every raw update is larger
    norms = [float(r["dp_clipping_norm"]) for r in rows]
    assert [clip for clip, _ in seen] == [0.05] * 4 + [norms[0]] * 4  # the norm each round sent, as reported
    if mode == "client_fixed":
        assert norms == [0.05, 0.05]
        assert [float(r["dp_noise_multiplier"]) for r in rows] == [0.1, 0.1]
    else:  # the norm follows the clients' norm bits (each says whether its mod clipped)
        assert norms[0] != 0.05 and norms[1] != norms[0]
        assert float(rows[0]["dp_noise_multiplier"]) > 0.1  # Flower's effective multiplier (the count is noised too)
    assert all(int(r["clients_replied"]) == 4 for r in rows)
    _, again = _run(tmp_path, "b", *dp)
    assert all(torch.equal(model[k], again[k]) for k in model)
    _, plain = _run(tmp_path, "c", f"aggregator={aggregator}")
    assert any(not torch.equal(model[k], plain[k]) for k in model)


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_client_side_clipping_equals_flowers_server_side_clipping_bit_for_bit(tmp_path, clipping):
    """The same clipping of the same updates with the same noise: whether Flower's mod clips
    each update in the ClientApp or Flower's server-side wrapper clips it on arrival, the
    clipping norms are the same to the last bit and so is the model, up to float rounding
    (measured: equal bit for bit after 2 rounds; after 3, one client's local training gave
    different last bits from the same global model, 1e-10 in the final model)."""
    dp = ["dp.noise_multiplier=0.1", "dp.clipping_norm=0.05", "rounds=3"]
    client_rows, client = _run(tmp_path, "client", f"dp.mode=client_{clipping}", *dp)
    server_rows, server = _run(tmp_path, "server", f"dp.mode=server_{clipping}", *dp)
    assert [r["dp_clipping_norm"] for r in client_rows] == [r["dp_clipping_norm"] for r in server_rows]
    assert all(torch.allclose(client[k], server[k], rtol=0, atol=1e-7) for k in client)


def test_client_fixed_dp_without_noise_clips_feddisco_updates(tmp_path, monkeypatch):
    """No noise: the only difference from the plain run is the clients' clipping."""
    seen = _watch_updates(monkeypatch, DifferentialPrivacyClientSideFixedClipping)
    _, model = _run(tmp_path, "a", "dp.mode=client_fixed", "dp.clipping_norm=0.05", "aggregator=feddisco")
    assert len(seen) == 8 and all(0.05 * (1 - 1e-3) <= norm <= 0.05 * (1 + 1e-5) for _, norm in seen)
    _, plain = _run(tmp_path, "c", "aggregator=feddisco")
    assert any(not torch.equal(model[k], plain[k]) for k in model)


@pytest.mark.slow
def test_client_adaptive_dp_on_ray_workers_equals_the_inprocess_run(tmp_path):
    """The Ray actors answer with the ClientApp for the run's dp.mode: its mod's norm bits move
    the norm (without them Flower's wrapper would refuse the replies), exactly as in-process."""
    dp = ["dp.mode=client_adaptive", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05"]
    rows, model = _run(tmp_path, "inprocess", *dp)
    ray_rows, on_ray = _run(tmp_path, "ray", *dp, "runtime=ray", "runtime.num_workers=2", "runtime.num_cpus=2")
    assert [r["dp_clipping_norm"] for r in ray_rows] == [r["dp_clipping_norm"] for r in rows]
    assert all(torch.equal(model[k], on_ray[k]) for k in model)


def test_resumed_client_adaptive_dp_run_equals_the_uninterrupted_one(tmp_path):
    dp = ["dp.mode=client_adaptive", "dp.noise_multiplier=0.1", "dp.clipping_norm=0.05", "checkpoint.every=1"]
    full_rows, full = _run(tmp_path, "full", *dp, "rounds=4")
    _run(tmp_path, "part", *dp)  # rounds=2
    d = tmp_path / "resumed"
    run(compose(*COMMON, *dp, "rounds=4", f"resume={tmp_path / 'part'}"), d)
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    resumed = torch.load(d / "model.pt")
    assert len({r["dp_clipping_norm"] for r in full_rows}) == 4  # the norm moves every round
    assert [r["dp_clipping_norm"] for r in rows] == [r["dp_clipping_norm"] for r in full_rows]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize("mode", ["client_fixed", "client_adaptive"])
@pytest.mark.parametrize("vectorize", ["true", "True"])
def test_client_side_dp_with_forced_vectorisation_is_refused_in_one_line(mode, vectorize):
    with pytest.raises(ConfigError, match=f"runtime.vectorize=true is not allowed with dp.mode={mode}") as e:
        load(compose(*COMMON, f"dp.mode={mode}", f"runtime.vectorize={vectorize}"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mode", ["server_adaptive", "client_adaptive"])
def test_an_adaptive_noise_multiplier_flower_cannot_reach_is_refused_in_one_line(mode):
    """Flower's rule: below num_sampled_clients/10 (here 4 clients: 0.4)."""
    with pytest.raises(ConfigError, match=f"dp.noise_multiplier=0.5 is too large for dp.mode={mode}"):
        load(compose(*COMMON, f"dp.mode={mode}", "dp.noise_multiplier=0.5"))
    assert load(compose(*COMMON, f"dp.mode={mode}", "dp.noise_multiplier=0.39")).dp.mode == mode


@pytest.mark.parametrize("mode", ["client_fixed", "client_adaptive"])
def test_deployment_refuses_client_side_dp_in_one_line(mode):
    with pytest.raises(ConfigError, match=f"dp.mode={mode} is not available in a deployment") as e:
        compose_config(f"dataset=digits model=mlp dp.mode={mode}")
    assert "\n" not in str(e.value)
    assert compose_config("dataset=digits model=mlp dp.mode=server_fixed").dp.mode == "server_fixed"
