"""Heterogeneous clients end to end: uneven participation and failures show
round by round in metrics.csv, and the same seed gives the same run."""
from __future__ import annotations

import json

from fedagg_testing import SMALL, compose

from fedagg.experiment import run

HET = [*SMALL, "num_clients=20", "rounds=8", "runtime=inprocess", "participation=bernoulli",
       "participation.p_min=0.2", "heterogeneity=stragglers", "heterogeneity.rate=0.3",
       "heterogeneity.mode=drop", "partition=dirichlet"]


def test_bernoulli_stragglers_show_round_by_round(tmp_path):
    rows = run(compose(*HET), tmp_path / "a")
    asked = [r["clients_asked"] for r in rows]
    failed = [r["clients_failed"] for r in rows]
    assert len(set(asked)) > 1, asked  # participation varies by round
    assert all(0 < a < 20 for a in asked), asked
    assert sum(failed) > 0 and len(set(failed)) > 1, failed
    assert all(r["clients_replied"] + r["clients_failed"] == r["clients_asked"] for r in rows)
    details = [json.loads(line) for line in (tmp_path / "a" / "rounds.jsonl").read_text().splitlines()]
    assert any("deadline" in why for d in details for why in d["failed"].values())
    # the same seed reproduces participation, faults and numbers exactly
    again = run(compose(*HET), tmp_path / "b")
    assert [(r["clients_asked"], r["clients_failed"], r["test_accuracy"]) for r in rows] == \
           [(r["clients_asked"], r["clients_failed"], r["test_accuracy"]) for r in again]
    other = run(compose(*HET, "seed=1"), tmp_path / "c")
    assert [r["clients_asked"] for r in other] != asked
