"""server_holdout: the server's labelled data held out of the training set for
every method alike, so FedLAW learns on training data and every rule is scored
on the same, whole test set."""
from __future__ import annotations

import numpy as np
import pytest
from fedagg_testing import SMALL, compose

from fedagg.data.federated import FederatedData
from fedagg.errors import ConfigError
from fedagg.experiment import build

SPEC = {"seed": 3, "num_clients": 6, "dataset.name": "digits", "partition.name": "dirichlet",
        "partition.alpha": 0.5}


def test_holdout_is_class_balanced_and_disjoint_from_every_client():
    fd = FederatedData({**SPEC, "server_holdout": 0.05})
    y = fd.data.y_train
    per_class = round(0.05 * len(y) / 10)
    assert np.bincount(y[fd.holdout], minlength=10).tolist() == [per_class] * 10
    shards = np.concatenate(fd.parts)
    assert not np.intersect1d(shards, fd.holdout).size  # no client holds a server sample
    assert sorted(np.concatenate([shards, fd.holdout]).tolist()) == list(range(len(y)))  # nothing else lost
    again = FederatedData({**SPEC, "server_holdout": 0.05})
    assert np.array_equal(again.holdout, fd.holdout)  # a named stream: same seed, same samples
    assert not np.array_equal(FederatedData({**SPEC, "seed": 4, "server_holdout": 0.05}).holdout, fd.holdout)


def test_no_holdout_leaves_the_partition_as_it_was():
    a, b = FederatedData(SPEC), FederatedData({**SPEC, "server_holdout": 0.0})
    assert len(a.holdout) == 0 and all(np.array_equal(p, q) for p, q in zip(a.parts, b.parts))


def test_fedlaw_learns_on_the_holdout_and_every_rule_sees_the_same_test_set_and_clients():
    base = [*SMALL, "server_holdout=0.05"]
    law = build(compose(*base, "aggregator=fedlaw"))
    avg = build(compose(*base, "aggregator=fedavg"))
    x, y = law.aggregator.ctx.proxy_data
    fd = law.fd
    np.testing.assert_array_equal(y, fd.data.y_train[fd.holdout])
    np.testing.assert_array_equal(x, fd.data.x_train[fd.holdout])
    assert len(law.y_test) == len(avg.y_test) == len(fd.data.y_test)  # the whole test set for both
    assert all(np.array_equal(p, q) for p, q in zip(law.fd.parts, avg.fd.parts))  # same clients' data
    # without server_holdout FedLAW keeps the official proxy carved from the test set
    old = build(compose(*SMALL, "aggregator=fedlaw"))
    assert len(old.y_test) < len(old.fd.data.y_test) and len(old.fd.holdout) == 0


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_bad_server_holdout_names_the_key(bad):
    with pytest.raises(ConfigError, match="server_holdout"):
        build(compose(*SMALL, f"server_holdout={bad}"))
