"""The model registry: shapes, sizes, which inputs each model fits, and the
unchanged initialisation of the original models."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from fedagg.task import models as M

IMAGE_MODELS = ["cnn", "cnn_fedau", "lenet5", "mlp", "resnet18", "resnet20", "vgg11"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_every_model():
    assert M.available() == sorted(["cnn", "cnn1d", "cnn_fedau", "lenet5", "lstm", "mlp", "resnet18", "resnet20",
                                    "vgg11"])
    with pytest.raises(ValueError, match="model.name='nosuch'.*valid choices: cnn"):
        M.build_model("nosuch", (1, 28, 28), 10)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_image_models_give_logits_for_28_and_32_pixel_images(shape):
    x = torch.rand(2, *shape)
    for name in IMAGE_MODELS:
        out = M.build_model(name, shape, 7)(x)
        assert out.shape == (2, 7), name


def test_parameter_counts_match_the_reference_architectures():
    # CIFAR ResNet-18 (3x3 stem, no max-pool) and ResNet-20 with projection shortcuts, 10 classes
    assert n_params(M.build_model("resnet18", (3, 32, 32), 10)) == 11_173_962
    assert n_params(M.build_model("resnet20", (3, 32, 32), 10)) == 272_474
    # NIID-Bench SimpleCNN on CIFAR-10: conv 456 + 2416, fc 48120 + 10164 + 850
    assert n_params(M.build_model("cnn", (3, 32, 32), 10)) == 62_006
    # SimpleCNNMNIST: 16*4*4 features into fc120
    assert n_params(M.build_model("cnn", (1, 28, 28), 10)) == 156 + 2416 + (256 * 120 + 120) + 10164 + 850
    # FedAU's CIFAR-10 CNN: conv 896 + 9248, fc 2048->256->64->10
    assert n_params(M.build_model("cnn_fedau", (3, 32, 32), 10)) == 896 + 9248 + 524_544 + 16_448 + 650
    # LEAF Shakespeare LSTM: embedding 80x8, LSTM(8->256), LSTM(256->256), linear 256->80
    lstm = 80 * 8 + 4 * 256 * (8 + 256 + 2) + 4 * 256 * (256 + 256 + 2) + 256 * 80 + 80
    assert n_params(M.build_model("lstm", (80,), 80)) == lstm


def test_group_norm_variant_has_no_batch_statistics():
    bn = M.build_model("resnet18", (3, 32, 32), 10, norm="batch")
    gn = M.build_model("resnet18", (3, 32, 32), 10, norm="group")
    assert any(k.endswith("running_mean") for k in bn.state_dict())
    assert not any("running" in k or "num_batches" in k for k in gn.state_dict())
    assert n_params(bn) == n_params(gn)  # GroupNorm has the same affine parameters
    with pytest.raises(ValueError, match="model.norm='layer'"):
        M.build_model("resnet20", (3, 32, 32), 10, norm="layer")


def test_lstm_reads_token_ids_passed_as_floats():
    m = M.build_model("lstm", (80,), 80, hidden=16)
    ids = torch.randint(0, 80, (3, 80))
    assert torch.equal(m(ids), m(ids.float()))  # train_local hands every input over as float32


def test_fit_error_names_model_dataset_and_the_models_that_fit():
    msg = M.fit_error("lstm", "cifar10", "image", (3, 32, 32))
    assert msg is not None and "model=lstm" in msg and "dataset=cifar10" in msg
    assert msg.endswith("models that fit: " + ", ".join(IMAGE_MODELS))
    msg = M.fit_error("cnn1d", "mnist_5k", "image", (1, 28, 28))
    assert msg is not None and "model=cnn1d" in msg and "dataset=mnist_5k" in msg and "resnet18" in msg
    assert M.fit_error("cnn", "shakespeare", "tokens", (80,)).endswith("models that fit: lstm")
    assert M.fit_error("cnn", "tiny", "image", (1, 8, 8)) is not None  # two 5x5 convs need >= 16 pixels
    for name in IMAGE_MODELS:
        assert M.fit_error(name, "cifar10", "image", (3, 32, 32)) is None
    assert M.fit_error("cnn1d", "mnist1d", "vector", (40,)) is None
    assert M.fit_error("mlp", "mnist1d", "vector", (40,)) is None


def test_original_models_initialise_exactly_as_before():
    """mlp and cnn1d go through the registry now; same seed, same parameters
    as constructing the unchanged classes directly (so default results hold)."""
    for name, direct in (("mlp", lambda: M.MLP(40, 10, hidden=100, depth=2)),
                         ("cnn1d", lambda: M.CNN1D(40, 10, channels=25))):
        torch.manual_seed(5)
        a = M.build_model(name, (40,), 10)
        torch.manual_seed(5)
        b = direct()
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), name


# --------------------------------------------------------------------------- MOON's projection head
def _todays(name: str, shape: tuple[int, ...], classes: int) -> Any:
    """The models mlp, cnn and lenet5 as they were before ``projection_dim`` existed, written out in plain torch
    (same modules in the same order: same parameter names and, from one seed, the same initial values)."""
    nn = torch.nn
    m: Any = nn.Module()
    if name == "mlp":
        m.net = nn.Sequential(nn.Flatten(), nn.Linear(shape[0], 100), nn.ReLU(), nn.Linear(100, classes))
        m.forward = m.net.forward
        return m
    act, pool = (nn.ReLU, nn.MaxPool2d) if name == "cnn" else (nn.Tanh, nn.AvgPool2d)
    pad = [M.PadTo(32)] if name == "lenet5" else []
    m.features = nn.Sequential(*pad, nn.Conv2d(shape[0], 6, 5), act(), pool(2), nn.Conv2d(6, 16, 5), act(), pool(2))
    flat = m.features(torch.zeros(1, *shape)).numel()
    m.classifier = nn.Sequential(nn.Linear(flat, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, classes))
    m.forward = lambda x: m.classifier(m.features(x).flatten(1))
    return m


HEADED = [("mlp", (8,), 100), ("cnn", (1, 16, 16), 84), ("lenet5", (1, 8, 8), 84)]


@pytest.mark.parametrize("name, shape, width", HEADED)
def test_projection_dim_zero_is_todays_model_bit_for_bit(name, shape, width):
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    for opts in ({}, {"projection_dim": 0}):
        torch.manual_seed(7)
        got: Any = M.build_model(name, shape, 3, **opts)
        torch.manual_seed(7)
        ref = _todays(name, shape, 3)
        sg, sr = got.state_dict(), ref.state_dict()
        assert list(sg) == list(sr) and all(torch.equal(sg[k], sr[k]) for k in sg), name
        assert torch.equal(got(x), ref(x))
        h, logits = got.represent(x)
        assert h.shape == (5, width) and torch.equal(logits, ref(x))


@pytest.mark.parametrize("name, shape, width", HEADED)
def test_projection_head_has_model_fedcons_shapes_and_gives_z(name, shape, width):
    """QinbinLi/MOON @ 8fcba3c ``model.py::ModelFedCon``: l1 = Linear(num_ftrs, num_ftrs), l2 =
    Linear(num_ftrs, out_dim), l3 = Linear(out_dim, n_classes), in place of the base model's last layer;
    forward gives (h, x = l2(relu(l1(h))), y = l3(x)) and MOON contrasts x."""
    P, C = 16, 3
    plain: Any = M.build_model(name, shape, C)
    headed: Any = M.build_model(name, shape, C, projection_dim=P)
    shapes = {n: tuple(p.shape) for n, p in headed.named_parameters()}
    before = {n: tuple(p.shape) for n, p in plain.named_parameters()}
    last = list(before)[-2].rsplit(".", 1)[0]  # the plain model's final linear layer, now the head
    assert {n: s for n, s in shapes.items() if not n.startswith(last + ".")} == \
        {n: s for n, s in before.items() if not n.startswith(last + ".")}
    assert {n[len(last) + 1:]: s for n, s in shapes.items() if n.startswith(last + ".")} == {
        "l1.weight": (width, width), "l1.bias": (width,), "l2.weight": (P, width), "l2.bias": (P,),
        "l3.weight": (C, P), "l3.bias": (C,)}
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    z, logits = headed.represent(x)
    head: Any = headed.get_submodule(last)
    h = (headed.net[:-1](x) if name == "mlp" else headed.classifier[:-1](headed.features(x).flatten(1)))
    assert h.shape == (4, width) and z.shape == (4, P)
    assert torch.equal(z, head.l2(torch.relu(head.l1(h)))) and torch.equal(logits, head.l3(z))
    assert torch.equal(logits, headed(x))
