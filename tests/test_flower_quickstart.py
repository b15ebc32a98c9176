"""Flower's quickstart-pytorch ClientApp (tests/quickstart_pytorch_app.py) under
Flower's own ``run_simulation`` (Ray), driven by a ServerApp of the test's own
with ``strategy_for("fedavg")``, ``("fedau")``, ``("feddisco", num_classes=10)``
and Flower's server-side DP wrapper around FedAU: every round is aggregated
from all four nodes, and nothing on the console says ERROR (no message type
the ClientApp cannot handle is sent)."""
from __future__ import annotations

import logging

import pytest
import quickstart_pytorch_app as quickstart
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from fedagg.flower import strategy_for

N = 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_clientapp_under_run_simulation_with_a_clean_console(capfd, caplog, monkeypatch):
    from flwr.simulation import run_simulation

    from fedagg.runtime import ray_grid

    ray_grid.shutdown()  # an earlier test's actor pool would hold every CPU Flower's actors wait for (a deadlock)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    caplog.set_level(logging.INFO)
    results: dict = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        init = ArrayRecord(quickstart.Net().state_dict())
        runs = {
            "fedavg": strategy_for("fedavg"),
            "fedau": strategy_for("fedau"),
            "feddisco": strategy_for("feddisco", num_classes=10),
            "dp-fedau": DifferentialPrivacyServerSideFixedClipping(strategy_for("fedau"), 0.1, 1.0, N),
        }
        for name, strategy in runs.items():
            try:
                results[name] = strategy.start(grid=grid, initial_arrays=init, num_rounds=2,
                                               train_config=ConfigRecord({"lr": 0.05}))
            except Exception as e:  # noqa: BLE001 - reported by the test
                results[name] = e

    run_simulation(server_app=app, client_app=quickstart.app, num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    out, err = capfd.readouterr()
    errors = {k: repr(v) for k, v in results.items() if isinstance(v, Exception)}
    assert not errors, errors
    assert sorted(results) == ["dp-fedau", "fedau", "fedavg", "feddisco"]
    for name, res in results.items():
        train, ev = res.train_metrics_clientapp[2], res.evaluate_metrics_clientapp[2]
        assert train["num-replied"] == N and "train_loss" in train, (name, train)
        assert ev["num-replies"] == N and 0.0 <= ev["eval_acc"] <= 1.0, (name, ev)
    lines = [r.getMessage() for r in caplog.records]  # the ServerApp's log (Flower's per-round lines)
    assert "[ROUND 2/2]" in lines and "aggregate_train: Received 4 results and 0 failures (0 rejected)" in lines
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    console = out + err  # what Ray's actors printed
    assert "ERROR" not in console, [line for line in console.splitlines() if "ERROR" in line][:5]
