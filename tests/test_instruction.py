"""The typed client instruction: one ConfigRecord key, exact round trip, clear refusals."""
from __future__ import annotations

import pytest
from flwr.app import ConfigRecord

from fedagg.flower.instruction import KEY, ClientInstruction, ModelSpec, SimPlan, TrainOptions


def instr() -> ClientInstruction:
    return ClientInstruction(
        data={"seed": 3, "num_clients": 5, "val_fraction": 0.1, "dataset.name": "digits", "partition.alpha": 0.5},
        model=ModelSpec("cnn1d", (1, 40), 10, {"channels": 25, "batch_norm": True}),
        train=TrainOptions(2, 0, 32, 0.05, 0.9, 0.0, 0.0, "sgd", 0.99, 1),
        seed=3, device="cpu",
    )


def test_round_trip_through_one_config_key():
    a = instr().for_client(7, SimPlan(epochs=3, work_fraction=0.5, fault="dropout"), proximal_mu=0.01)
    rec = a.encode()
    assert list(rec) == [KEY] and isinstance(rec, ConfigRecord)
    b = ClientInstruction.decode(rec)
    assert b == a and b.round == 7 and b.plan.fault == "dropout" and b.train.proximal_mu == 0.01
    assert b.model.input_shape == (1, 40) and b.num_clients == 5
    assert instr().for_client(1, SimPlan()).train.proximal_mu == 0.0  # no override: the configured term


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="needs a fedagg strategy"):
        ClientInstruction.decode(ConfigRecord({"lr": 0.1}))
    with pytest.raises(ValueError, match="malformed"):
        ClientInstruction.decode(ConfigRecord({KEY: '{"data": {}}'}))
    with pytest.raises(ValueError, match="SimPlan.fault='melt'"):
        SimPlan(fault="melt")
    with pytest.raises(ValueError, match="work_fraction=0"):
        SimPlan(work_fraction=0.0)
