"""The vectorised cohort trainer equals train_local, client by client."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedagg.seeding import stream_key
from fedagg.task.cohort import Member, train_cohort, unsupported_reason
from fedagg.task.models import build_model
from fedagg.task.train import get_params, set_params, train_local

TOL = 1e-5


def _model(name: str, shape: tuple[int, ...], classes: int = 4, **opts):
    torch.manual_seed(0)
    return build_model(name, shape, classes, **opts)


def _init(model: torch.nn.Module, key: int) -> dict[str, np.ndarray]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_key(0, "init", key))
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
    return get_params(model)


def _members(shape: tuple[int, ...], sizes: list[int], classes: int = 4, *, same_start: bool = True,
             model: torch.nn.Module, epochs: list[int] | None = None, steps: int = 0,
             work: list[float] | None = None) -> list[Member]:
    r = np.random.default_rng(1)
    start = _init(model, 0)
    out = []
    for i, n in enumerate(sizes):
        x = r.normal(size=(n, *shape)).astype(np.float32)
        y = r.integers(0, classes, size=n).astype(np.int64)
        params = start if same_start else _init(model, i + 1)
        out.append(Member(client=10 + 3 * i, x=x, y=y, params=params,
                          epochs=(epochs or [1] * len(sizes))[i], steps=steps,
                          work_fraction=(work or [1.0] * len(sizes))[i]))
    return out


def _check(model, members, **opts):
    got = train_cohort(model, members, seed=7, round=3, **opts)
    for m, (params, res) in zip(members, got):
        ref = _model_like(model)
        set_params(ref, m.params)
        want = train_local(ref, m.x, m.y, epochs=m.epochs, steps=m.steps, work_fraction=m.work_fraction,
                           seed=7, round=3, client=m.client, **opts)
        wp = get_params(ref)
        assert list(params) == list(wp)
        err = max(float(np.abs(params[k] - wp[k]).max()) for k in wp)
        assert err <= TOL, f"client {m.client}: max abs diff {err}"
        assert res.steps == want.steps
        assert res.loss == pytest.approx(want.loss, rel=TOL, abs=TOL)
        assert res.accuracy == pytest.approx(want.accuracy, abs=1e-9)
    return got


def _model_like(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("name,shape", [("mlp", (12,)), ("cnn1d", (40,))])
def test_unequal_shards_momentum_weight_decay(name, shape):
    model = _model(name, shape, channels=4) if name == "cnn1d" else _model(name, shape, hidden=8)
    members = _members(shape, [37, 5, 64, 32], model=model, epochs=[2, 1, 2, 3])
    got = _check(model, members, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3)
    # the clients really trained, differently
    first = next(iter(got[0][0]))
    assert not np.allclose(got[0][0][first], got[2][0][first])
    assert not np.allclose(got[0][0][first], members[0].params[first])


def test_different_starting_models_and_fedprox():
    model = _model("mlp", (6,), hidden=5)
    members = _members((6,), [20, 9, 33], model=model, same_start=False)
    _check(model, members, batch_size=4, lr=0.1, momentum=0.5, proximal_mu=0.3)


def test_stragglers_dropouts_and_fixed_steps():
    model = _model("cnn1d", (20,), channels=3)
    # work fractions as the heterogeneity models send them (straggler partial work, dropout = 0.5)
    members = _members((20,), [30, 30, 11, 50], model=model, work=[1.0, 0.3, 0.5, 0.01], steps=7)
    got = _check(model, members, batch_size=6, lr=0.05, momentum=0.9)
    assert [r.steps for _, r in got] == [7, 2, 3, 1]


def test_plain_sgd_single_client():
    model = _model("mlp", (5,), hidden=7, depth=3)
    _check(model, _members((5,), [13], model=model, epochs=[3]), batch_size=5, lr=0.2)


def test_unsupported_setups_are_named():
    assert unsupported_reason(_model("mlp", (5,))) is None
    assert unsupported_reason(_model("cnn1d", (40,)), input_shape=(40,)) is None
    assert "BatchNorm" in unsupported_reason(_model("cnn1d", (40,), batch_norm=True))
    assert "optimizer=adam" in unsupported_reason(_model("mlp", (5,)), optimizer="adam")
    drop = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    assert "dropout" in unsupported_reason(drop)

    class DataDependent(torch.nn.Module):  # python control flow on tensor values: vmap cannot run it
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x) if float(x.sum()) > 0 else -self.lin(x)

    assert "vmap cannot run" in unsupported_reason(DataDependent(), input_shape=(3,))


@pytest.mark.parametrize("name,shape,opts", [
    ("cnn", (1, 16, 16), {}),
    ("cnn_fedau", (3, 8, 8), {}),
    ("lenet5", (1, 12, 12), {}),
    ("resnet20", (3, 8, 8), {"norm": "group"}),
])
def test_image_models(name, shape, opts):
    model = _model(name, shape, **opts)
    assert unsupported_reason(model, input_shape=shape) is None
    members = _members(shape, [9, 4, 6], model=model, epochs=[1, 2, 1])
    _check(model, members, batch_size=4, lr=0.02, momentum=0.9, weight_decay=5e-4)


def test_batchnorm_resnet_is_not_vectorised():
    assert "BatchNorm" in unsupported_reason(_model("resnet20", (3, 8, 8)))
