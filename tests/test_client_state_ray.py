"""runtime=ray with a rule that keeps client state (SCAFFOLD): the driver's store sends each
client's state with its work, so 1 and 2 workers give the same run, bitwise (vectorised
chunks and the per-client path)."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
from fedagg_testing import SMALL, compose

ray = pytest.importorskip("ray")

from fedagg.experiment import run  # noqa: E402
from fedagg.runtime import ray_grid  # noqa: E402

COMMON = [*SMALL, "aggregator=scaffold", "partition.alpha=0.3", "rounds=3", "runtime=ray",
          "runtime.state_memory_mb=0.05"]


@pytest.fixture(scope="module", autouse=True)
def _ray_tmp():
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fedagg_ray", dir="/tmp")
    ray_grid.shutdown()
    yield
    ray_grid.shutdown()
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old


@pytest.mark.slow
def test_one_and_two_workers_give_the_same_scaffold_run(tmp_path):
    rows = {}
    for name, extra in (("w2", ["runtime.num_workers=2", "runtime.cohort_chunk=2", "runtime.batch_size=2"]),
                        ("w1", ["runtime.num_workers=1", "runtime.cohort_chunk=2"]),
                        ("w2_plain", ["runtime.num_workers=2", "runtime.vectorize=false", "runtime.batch_size=2"]),
                        ("w1_plain", ["runtime.num_workers=1", "runtime.vectorize=false"])):
        rows[name] = run(compose(*COMMON, *extra), tmp_path / name)
    for a, b in (("w2", "w1"), ("w2_plain", "w1_plain")):
        pa, pb = torch.load(tmp_path / a / "model.pt"), torch.load(tmp_path / b / "model.pt")
        for k in pa:
            assert torch.equal(pa[k], pb[k]), (a, b, k)
        assert [r["test_accuracy"] for r in rows[a]] == [r["test_accuracy"] for r in rows[b]]
    assert (tmp_path / "w2" / "client_state.sqlite").exists()  # the budget spilled states to the file
    pv, pp = torch.load(tmp_path / "w2" / "model.pt"), torch.load(tmp_path / "w2_plain" / "model.pt")
    assert max(float((pv[k] - pp[k]).abs().max()) for k in pv) <= 1e-4  # stacked vs per-client: float rounding
