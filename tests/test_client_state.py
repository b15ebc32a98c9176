"""Per-client state (fedagg/flower/client_state.py, fedagg/runtime/state_store.py) with SCAFFOLD:
a run whose accuracy rises; the store's spill and snapshot; the same numbers with the states in
memory, spilled to the file, kept in each node's Context (the SuperNode path), and after a stop +
resume; refusals in one line; strategy_for("scaffold") in a foreign ServerApp."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from fedagg_testing import SMALL, compose

from fedagg.errors import ConfigError
from fedagg.experiment import build, run
from fedagg.runtime.state_store import SNAPSHOT_NAME, ClientStateStore, StoreFull

STATEFUL = [*SMALL, "aggregator=scaffold", "runtime=inprocess", "partition.alpha=0.3"]
TINY = "runtime.state_memory_mb=0.03"  # about one client's state (digits MLP): the rest spill to the file


def _model(d):
    return torch.load(d / "model.pt")


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- the store
def test_store_spills_beyond_its_budget_and_gives_back_the_same_bytes(tmp_path):
    r = np.random.default_rng(0)
    states = {c: {"w": r.normal(size=(50, 20)).astype(np.float32), "b": r.normal(size=20).astype(np.float32)}
              for c in range(8)}
    each = sum(v.nbytes for v in states[0].values())
    s = ClientStateStore(3 * each, tmp_path / "spill.sqlite")
    for c, st in states.items():
        s.put(c, st)
    assert len(s) == 8 and s.memory_bytes <= 3 * each and (tmp_path / "spill.sqlite").exists()
    assert s.get(99) is None
    for c, st in states.items():
        got = s.get(c)
        assert got.keys() == st.keys() and all(np.array_equal(got[k], st[k]) and got[k].dtype == st[k].dtype
                                               for k in st)
    s.put(0, {k: v + 1 for k, v in states[0].items()})  # a newer state shadows the spilled one
    meta = s.snapshot(tmp_path / SNAPSHOT_NAME)
    assert meta["clients"] == 8 and meta["names"] == ["b", "w"]
    for spill in (tmp_path / "again.sqlite", None):
        t = ClientStateStore(100 * each, spill)
        t.restore(tmp_path / SNAPSHOT_NAME)
        assert len(t) == 8 and np.array_equal(t.get(0)["w"], states[0]["w"] + 1)
        assert np.array_equal(t.get(5)["b"], states[5]["b"])
    full = ClientStateStore(each, None)
    full.put(0, states[0])
    with pytest.raises(StoreFull, match="runtime.state_spill=false"):
        full.put(1, states[1])


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("state_runs")
    out = {"memory": run(compose(*STATEFUL, "rounds=5"), base / "memory"),
           "spilled": run(compose(*STATEFUL, "rounds=5", TINY, "checkpoint.every=1"), base / "spilled")}
    # stopped after round 2 (its checkpoint is what a kill leaves), resumed to round 5
    run(compose(*STATEFUL, "rounds=2", TINY, "checkpoint.every=1"), base / "stopped")
    out["resumed"] = run(compose(*STATEFUL, "rounds=5", TINY, "checkpoint.every=1", f"resume={base / 'stopped'}"),
                         base / "resumed")
    dyn = [*SMALL, "aggregator=feddyn", "runtime=inprocess", "partition.alpha=0.3", TINY, "checkpoint.every=1"]
    out["feddyn"] = run(compose(*dyn, "rounds=5"), base / "feddyn")
    run(compose(*dyn, "rounds=2"), base / "feddyn_stopped")
    out["feddyn_resumed"] = run(compose(*dyn, "rounds=5", f"resume={base / 'feddyn_stopped'}"), base / "feddyn_resumed")
    return base, out


def test_scaffold_learns(runs):
    base, rows = runs
    acc = [r["test_accuracy"] for r in rows["memory"]]
    assert acc[-1] > acc[0] and acc[-1] > 0.6, acc
    assert all(r["clients_replied"] == 6 and r["clients_rejected"] == 0 for r in rows["memory"])
    assert rows["memory"][-1]["c_norm"] > 0


def test_feddyn_learns_and_resumes_exactly(runs):
    base, rows = runs
    acc = [r["test_accuracy"] for r in rows["feddyn"]]
    assert acc[-1] > acc[0] and acc[-1] > 0.6, acc
    assert rows["feddyn"][-1]["h_norm"] > 0
    _equal(_model(base / "feddyn"), _model(base / "feddyn_resumed"))


def test_states_spilled_to_the_file_give_the_same_run(runs):
    base, rows = runs
    assert (base / "spilled" / "client_state.sqlite").exists()
    assert not (base / "memory" / "client_state.sqlite").exists()
    _equal(_model(base / "memory"), _model(base / "spilled"))


def test_stop_and_resume_with_client_state_equals_the_uninterrupted_run(runs):
    base, rows = runs
    assert [r["round"] for r in rows["resumed"]] == [1, 2, 3, 4, 5]
    _equal(_model(base / "spilled"), _model(base / "resumed"))
    assert [r["test_accuracy"] for r in rows["spilled"]] == [r["test_accuracy"] for r in rows["resumed"]]
    ck = pickle.loads((base / "stopped" / "checkpoint.pkl").read_bytes())
    assert ck["client_state"]["clients"] == 6 and (base / "stopped" / SNAPSHOT_NAME).exists()


def test_unknown_state_in_a_checkpoint_is_refused_before_training(runs, tmp_path):
    base, _ = runs
    import shutil

    old = tmp_path / "old"
    shutil.copytree(base / "stopped", old)
    ck = pickle.loads((old / "checkpoint.pkl").read_bytes())
    ck["client_state"]["names"] = ["conv.weight"]
    (old / "checkpoint.pkl").write_bytes(pickle.dumps(ck))
    with pytest.raises(ConfigError, match="unknown state"):
        build(compose(*STATEFUL, "rounds=5", TINY, "checkpoint.every=1", f"resume={old}"))
    (old / SNAPSHOT_NAME).unlink()
    ck["client_state"]["names"] = []
    (old / "checkpoint.pkl").write_bytes(pickle.dumps(ck))
    with pytest.raises(ConfigError, match="client-state file .* is missing"):
        build(compose(*STATEFUL, "rounds=5", TINY, "checkpoint.every=1", f"resume={old}"))


def test_a_store_that_cannot_hold_the_clients_is_refused_before_training(tmp_path):
    """(The CLI's one line with exit 2: tests/test_bad_values.py.)"""
    with pytest.raises(ConfigError, match=r"runtime.state_memory_mb=0.05 holds the state of \d+ of num_clients=6 "
                                          r"clients .* set runtime.state_spill=true"):
        run(compose(*STATEFUL, "rounds=1", "runtime.state_memory_mb=0.05", "runtime.state_spill=false"), tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_stateless_rules_build_no_store(tmp_path):
    exp = build(compose(*SMALL, "runtime=inprocess", "rounds=1"))
    assert not exp.aggregator.client_state and exp.client_state is None
    run(compose(*SMALL, "runtime=inprocess", "rounds=1"), tmp_path)
    assert not (tmp_path / "client_state.sqlite").exists()


# --------------------------------------------------------------------------- Flower: a foreign ServerApp
def test_strategy_for_scaffold_keeps_state_in_each_nodes_context_as_the_store_does():
    """strategy_for("scaffold") driving fedagg's ClientApp: on a grid that keeps no store the
    state lives in each node's Context.state (a SuperNode's own); with the driver's store the
    run is the same, bitwise."""
    import foreign_flower_app  # noqa: F401 - the tests' path is set up by conftest
    from fedagg_testing import run_in_node_contexts_and_in_the_store

    run_in_node_contexts_and_in_the_store("scaffold", build(compose(*STATEFUL, "rounds=3")), rounds=3)


def test_strategy_for_scaffold_refuses_replies_without_the_control_variate_delta():
    import json

    import foreign_flower_app
    from flwr.app import ConfigRecord

    from fedagg.flower import strategy_for
    from fedagg.flower.codec import params_to_record
    from fedagg.outcomes import RunFailed
    from fedagg.runtime.inprocess import InProcessGrid, set_task_identity

    exp = build(compose(*STATEFUL, "rounds=1"))
    cfg = ConfigRecord({"data-spec": json.dumps(dict(exp.instruction.data)), "lr": 0.1, "momentum": 0.0,
                        "epochs": 1, "batch-size": 32})
    set_task_identity()
    s = strategy_for("scaffold", max_failed_rounds=1)
    with pytest.raises(RunFailed, match=r"rejected: aggregator 'scaffold' needs the control-variate delta "
                                        r"\(dc.<name>\) and K\*lr \(lr_steps\) in the reply's 'fedagg.rule-reply'"):
        s.start(grid=InProcessGrid(foreign_flower_app.app, 6), initial_arrays=params_to_record(exp.init_params(0)),
                num_rounds=2, train_config=cfg, evaluate_config=cfg)


@pytest.mark.parametrize("mode", ["server_fixed", "client_fixed"])
def test_dp_modes_are_refused_for_rules_with_their_own_arrays(mode):
    """Flower's DP wrapper and mods take messages with one ArrayRecord (run without this check:
    server_fixed fails mid-round, client_fixed refuses every client)."""
    with pytest.raises(ConfigError, match=f"dp.mode={mode}: .*use dp.mode=none"):
        build(compose(*STATEFUL, f"dp.mode={mode}"))


@pytest.mark.parametrize("rule", ["scaffold_m", "fedavg_m"])
def test_the_momentum_variants_refuse_a_second_sgd_momentum(rule):
    with pytest.raises(ConfigError, match=r"train.momentum=0.9 would add a second momentum; set train.momentum=0"):
        build(compose(*STATEFUL, f"aggregator={rule}"))
    build(compose(*STATEFUL, f"aggregator={rule}", "train.momentum=0"))
