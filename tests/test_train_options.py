"""Client optimisers (``train.optimizer=sgd|adam``) and the per-round
learning-rate schedule (``train.lr_decay``, ``train.lr_decay_every``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fedagg_testing import SMALL, compose
from torch import nn

from fedagg.config import load
from fedagg.errors import ConfigError
from fedagg.experiment import run
from fedagg.task.train import round_lr, train_local


def test_round_lr_worked_numbers():
    # constant by default
    assert [round_lr(0.1, r) for r in (1, 2, 50)] == [0.1, 0.1, 0.1]
    # exponential, FedLAW's 0.99 per round: round r trains at 0.1 * 0.99 ** (r - 1)
    assert round_lr(0.1, 1, 0.99) == 0.1
    assert math.isclose(round_lr(0.1, 2, 0.99), 0.099, rel_tol=1e-12)
    assert math.isclose(round_lr(0.1, 3, 0.99), 0.09801, rel_tol=1e-12)
    assert math.isclose(round_lr(0.1, 101, 0.99), 0.1 * 0.99**100, rel_tol=1e-12)  # 0.0366
    # step: halve every 10 rounds
    got = [round_lr(0.1, r, 0.5, 10) for r in (1, 10, 11, 20, 21, 31)]
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125], rel=1e-12)


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def _batch(n: int = 8):
    g = np.random.default_rng(1)
    return g.normal(size=(n, 3)).astype(np.float32), np.arange(n) % 2


def _full_batch_grad(model: nn.Module, x, y) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_one_adam_step_equals_adam_by_hand():
    """One full-batch step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected
    m_hat = g, v_hat = g^2, so w1 = w0 - lr * g / (|g| + eps)."""
    x, y = _batch()
    lr, eps = 0.01, 1e-8
    ref = _linear()
    w0 = [p.detach().clone() for p in ref.parameters()]
    g = _full_batch_grad(ref, x, y)
    model = _linear()
    res = train_local(model, x, y, steps=1, batch_size=len(y), lr=lr, optimizer="adam", momentum=0.9)
    assert res.steps == 1
    for p, w, gi in zip(model.parameters(), w0, g):
        m_hat = (1 - 0.9) * gi / (1 - 0.9)
        v_hat = (1 - 0.999) * gi**2 / (1 - 0.999)
        expect = w - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-7)
    # and |step| is ~lr for every coordinate with a non-zero gradient: Adam's signature
    step = torch.cat([(p.detach() - w).flatten() for p, w in zip(model.parameters(), w0)])
    assert torch.allclose(step.abs(), torch.full_like(step, lr), atol=1e-6)


def test_adam_matches_torch_adam_over_several_steps():
    """train_local(optimizer='adam') is torch.optim.Adam over the same minibatches."""
    x, y = _batch(20)
    model = _linear()
    train_local(model, x, y, epochs=2, batch_size=6, lr=0.05, optimizer="adam", weight_decay=1e-3, seed=3,
                round=2, client=1)
    ref = _linear()
    opt = torch.optim.Adam(ref.parameters(), lr=0.05, weight_decay=1e-3)
    from fedagg.seeding import torch_generator

    gen = torch_generator(3, "shuffle", 2, 1)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
    for _ in range(2):
        perm = torch.randperm(20, generator=gen)
        for s in range(0, 20, 6):
            idx = perm[s : s + 6]
            opt.zero_grad()
            nn.functional.cross_entropy(ref(xt[idx]), yt[idx]).backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_sgd_is_the_default_and_one_step_is_w_minus_lr_g():
    x, y = _batch()
    ref = _linear()
    w0 = [p.detach().clone() for p in ref.parameters()]
    g = _full_batch_grad(ref, x, y)
    model = _linear()
    train_local(model, x, y, steps=1, batch_size=len(y), lr=0.3)
    for p, w, gi in zip(model.parameters(), w0, g):
        torch.testing.assert_close(p.detach(), w - 0.3 * gi, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "override, key",
    [("train.optimizer=adamw", "train.optimizer"), ("train.lr_decay=0", "train.lr_decay"),
     ("train.lr_decay=1.5", "train.lr_decay"), ("train.lr_decay_every=0", "train.lr_decay_every")],
)
def test_bad_optimizer_options_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(compose(*SMALL, override))


def test_clients_train_with_the_rounds_lr_and_adam_learns(tmp_path, monkeypatch):
    """The schedule reaches every client: round r trains at lr * 0.5 ** ((r-1)//2),
    with Adam; and Adam at lr 0.01 learns digits (chance is 0.1)."""
    import fedagg.flower.client_app as ca

    seen: list[tuple[int, float, str]] = []
    real = ca.train_local

    def spy(*a, **k):
        seen.append((k["round"], k["lr"], k["optimizer"]))
        return real(*a, **k)

    monkeypatch.setattr(ca, "train_local", spy)
    rows = run(compose(*SMALL, "rounds=4", "runtime=inprocess", "train.optimizer=adam", "train.lr=0.01",
                       "train.lr_decay=0.5", "train.lr_decay_every=2", "train.epochs=1"), tmp_path)
    assert {(r, lr, o) for r, lr, o in seen} == {(1, 0.01, "adam"), (2, 0.01, "adam"), (3, 0.005, "adam"),
                                                  (4, 0.005, "adam")}
    assert len(seen) == 4 * 6
    assert rows[-1]["test_accuracy"] > 0.6, [r["test_accuracy"] for r in rows]
