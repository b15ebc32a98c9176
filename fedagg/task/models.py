"""Models, in one registry. Each entry is a builder
``(input_shape, num_classes, **options) -> nn.Module`` plus the kind of input
it fits, so a model that cannot read a dataset is refused before training.

=========  ===========  =============================================================================
name       fits         what it is
=========  ===========  =============================================================================
mlp        vector/image fully connected, flattens its input (``hidden``, ``depth``, ``projection_dim``)
cnn1d      vector       1-D CNN for MNIST-1D-like signals (``channels``, ``batch_norm``)
cnn        image        the "simple-cnn" of NIID-Bench / FedDisco: conv6-conv16 (5x5, max-pool)
                        -fc120-fc84; 16x4x4 features at 28x28, 16x5x5 at 32x32 (``projection_dim``)
cnn_fedau  image        FedAU's CNN: conv32-conv32 (3x3, same padding, max-pool), FC ``hidden``
                        (CIFAR-10: 256, 64; SVHN / Fashion-MNIST: 128), Kaiming init, zero biases
lenet5     image        LeCun et al. 1998: conv6-avgpool-conv16-avgpool-fc120-fc84, tanh (``projection_dim``)
resnet18   image        ResNet-18 for 32x32 (3x3 stem, stride 1, no max-pool), ``norm=batch|group``
resnet20   image        ResNet-20 of He et al. 2016 for CIFAR (FedLAW's CIFAR-100 model), 16-32-64
vgg11      image        VGG-11 (config "A") for 32x32, classifier 512-512-C, ``batch_norm`` option
lstm       tokens       LEAF's Shakespeare model: embedding 8, 2 LSTM layers of 256, next char
=========  ===========  =============================================================================

Image models take (C, H, W) with any channel count. ``lenet5``, ``resnet18``,
``resnet20`` and ``vgg11`` are defined for 32x32: a smaller image (28x28
MNIST) is zero-padded to 32x32 inside the model (LeNet-5's own convention),
a larger one is pooled adaptively. The ResNets and VGG are written in plain
torch, block for block as torchvision's ``BasicBlock``/``ResNet``: the
torchvision wheel paired with torch 2.13 ships CUDA kernels that do not load
next to a CPU-only torch, so fedagg does not import it.

``mlp`` (depth >= 2), ``cnn`` and ``lenet5`` expose a representation, ``represent(x) -> (z, logits)``
(MOON's, :mod:`fedagg.task.contrastive`): by default the last hidden layer h, the input of the final
linear layer. ``projection_dim`` = P > 0 replaces that final layer by MOON's projection head and
classifier, as MOON's code (QinbinLi/MOON ``model.py::ModelFedCon``): h -> Linear(d, d) -> ReLU ->
Linear(d, P) = z -> Linear(P, classes) = the logits (:class:`ProjectionHead`); z is then the
representation. ``projection_dim=0`` (the default) is the model without a head, bit for bit (the
same parameters, names and initial values).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import nn

from ..registry import Registry

# kinds of input a dataset can have (fedagg.data.datasets.Dataset.input_kind)
IMAGE, VECTOR, TOKENS = "image", "vector", "tokens"
KIND_TEXT = {
    IMAGE: "images (C, H, W)",
    VECTOR: "1-D feature vectors / signals",
    TOKENS: "integer token sequences",
}


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    fits: tuple[str, ...]  # input kinds this model reads
    min_side: int = 0  # smallest image side it accepts


# a layer width, depth or count: fedagg.config refuses a value < 1 when it loads the config, before any model is built
Size = Annotated[int, Gt(0)]
# MOON's projection head: its output width P (0: no head); refused when < 0 as the config is loaded
ProjectionDim = Annotated[int, Ge(0)]

_MODELS: Registry[ModelEntry] = Registry("model.name")
available = _MODELS.available


def register_model(name: str, fits: tuple[str, ...], min_side: int = 0) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(input_shape, num_classes, **options)`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.register(name)(ModelEntry(fn, fits, min_side))
        return fn

    return deco


def builder(name: str) -> Callable[..., nn.Module]:
    return _MODELS.get(name).build


def fit_problem(name: str, input_kind: str, input_shape: tuple[int, ...]) -> str | None:
    """Why model ``name`` cannot read inputs of this kind and shape (None if it can)."""
    e = _MODELS.get(name)
    if input_kind not in e.fits:
        return f"it reads {' or '.join(KIND_TEXT[k] for k in e.fits)}"
    if input_kind == IMAGE and (len(input_shape) != 3 or min(input_shape[1:]) < e.min_side):
        return f"it needs (C, H, W) images of at least {e.min_side}x{e.min_side}"
    return None


def models_for(input_kind: str, input_shape: tuple[int, ...]) -> list[str]:
    return [m for m in available() if fit_problem(m, input_kind, input_shape) is None]


def fit_error(model: str, dataset: str, input_kind: str, input_shape: tuple[int, ...]) -> str | None:
    """One line saying that ``model`` does not fit ``dataset`` and which models do (None if it fits)."""
    why = fit_problem(model, input_kind, input_shape)
    if why is None:
        return None
    fit = models_for(input_kind, input_shape)
    return (
        f"model={model} does not fit dataset={dataset}: the dataset has {KIND_TEXT.get(input_kind, input_kind)} "
        f"of shape {tuple(input_shape)}, {why}; models that fit: {', '.join(fit) or 'none'}"
    )


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """A registered model by name, or a user's own by dotted path (``model._target_``:
    a class or function ``(input_shape, num_classes, **options) -> nn.Module``)."""
    shape = tuple(int(d) for d in input_shape)
    if name not in _MODELS and "." in name:
        from hydra.utils import instantiate

        return instantiate({"_target_": name, **options}, shape, int(num_classes), _convert_="all")
    return builder(name)(shape, int(num_classes), **options)


# --------------------------------------------------------------------------- MOON's projection head
class ProjectionHead(nn.Module):
    """MOON's projection head and classifier in place of a model's final linear layer, as
    ``ModelFedCon`` (QinbinLi/MOON ``model.py`` @ 8fcba3c, ``--use_project_head 1``): the features h
    (width d) -> ``l1`` Linear(d, d) -> ReLU -> ``l2`` Linear(d, P) = z, the projection MOON
    contrasts -> ``l3`` Linear(P, classes) = the logits."""

    def __init__(self, width: int, projection_dim: int, num_classes: int):
        super().__init__()
        self.l1 = nn.Linear(width, width)
        self.l2 = nn.Linear(width, projection_dim)
        self.l3 = nn.Linear(projection_dim, num_classes)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, the logits) of the features h."""
        z = self.l2(F.relu(self.l1(h)))
        return z, self.l3(z)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.project(h)[1]


def _final_layer(width: int, num_classes: int, projection_dim: int) -> nn.Module:
    """The classifier on the last hidden layer: one linear layer, or MOON's head (``projection_dim`` > 0)."""
    if projection_dim > 0:
        return ProjectionHead(width, int(projection_dim), num_classes)
    return nn.Linear(width, num_classes)


def _represent(h: torch.Tensor, final: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(MOON's representation, the logits) from the last hidden layer h: the head's z, or h without one."""
    if isinstance(final, ProjectionHead):
        return final.project(h)
    return h, final(h)


# --------------------------------------------------------------------------- vectors
class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 100, depth: int = 2,
                 projection_dim: int = 0):
        super().__init__()
        if projection_dim > 0 and depth < 2:
            raise ValueError(f"model.projection_dim={projection_dim}: model mlp with model.depth={depth} has no "
                             "hidden layer to put MOON's projection head on; set model.depth>=2 or "
                             "model.projection_dim=0")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(_final_layer(width, num_classes, projection_dim))
        self.net = nn.Sequential(*layers)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def represent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last hidden layer's activations -- or their projection, with a head --, the logits) in one pass
        (MOON's representation)."""
        return _represent(self.net[:-1](x), self.net[-1])


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D (length-40 signals), in the spirit of the
    mnist1d paper's ConvBase; ``batch_norm=True`` adds BatchNorm layers."""

    def __init__(self, length: int, num_classes: int, channels: int = 25, batch_norm: bool = False):
        super().__init__()
        norm = (lambda c: nn.BatchNorm1d(c)) if batch_norm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), norm(channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), norm(channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), norm(channels), nn.ReLU(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@register_model("mlp", fits=(VECTOR, IMAGE))
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: Size = 100, depth: Size = 2,
        projection_dim: ProjectionDim = 0) -> nn.Module:
    return MLP(_numel(input_shape), num_classes, hidden=hidden, depth=depth, projection_dim=projection_dim)


@register_model("cnn1d", fits=(VECTOR,))
def cnn1d(input_shape: tuple[int, ...], num_classes: int, channels: Size = 25, batch_norm: bool = False) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"model.name=cnn1d needs 1-D inputs, got shape {input_shape}; use model=mlp")
    return CNN1D(input_shape[0], num_classes, channels=channels, batch_norm=batch_norm)


# --------------------------------------------------------------------------- small image CNNs
def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


class SimpleCNN(nn.Module):
    """conv(C→6, 5) → ReLU → maxpool 2 → conv(6→16, 5) → ReLU → maxpool 2 →
    fc 120 → ReLU → fc 84 → ReLU → fc K (NIID-Bench's SimpleCNN / SimpleCNNMNIST,
    the "simple-cnn" FedDisco trains on CIFAR-10 and Fashion-MNIST); ``projection_dim`` > 0: fc K is
    MOON's :class:`ProjectionHead` on the 84 units."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, projection_dim: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, input_shape), 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            _final_layer(84, num_classes, projection_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def represent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the penultimate layer's activations (fc 84) -- or their projection, with a head --, the logits) in one
        pass (MOON's representation)."""
        return _represent(self.classifier[:-1](self.features(x).flatten(1)), self.classifier[-1])


@register_model("cnn", fits=(IMAGE,), min_side=16)
def cnn(input_shape: tuple[int, ...], num_classes: int, projection_dim: ProjectionDim = 0) -> nn.Module:
    return SimpleCNN(input_shape, num_classes, projection_dim)


class FedAUCNN(nn.Module):
    """FedAU's CNN (model/cnn_*.py of its code): two conv(3x3, 32, same padding)
    → ReLU → maxpool 2 blocks, then FC layers of widths ``hidden`` with ReLU and
    a linear head; Kaiming-normal weights and zero biases on the conv and hidden
    FC layers (the head keeps torch's default init, as there)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        layers: list[nn.Module] = []
        width = _flat_size(self.conv, input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.fc = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        for m in [*self.conv, *self.fc]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv(x).flatten(1)))


@register_model("cnn_fedau", fits=(IMAGE,), min_side=4)
def cnn_fedau(input_shape: tuple[int, ...], num_classes: int, hidden: list[Size] | None = None) -> nn.Module:
    return FedAUCNN(input_shape, num_classes, tuple(hidden) if hidden is not None else (256, 64))


class PadTo(nn.Module):
    """Zero-pad an image up to ``side`` x ``side`` (centred); larger images pass unchanged."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        dh, dw = max(0, self.side - h), max(0, self.side - w)
        if dh == 0 and dw == 0:
            return x
        return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) on 32x32: conv(C→6, 5) → tanh → avgpool 2 →
    conv(6→16, 5) → tanh → avgpool 2 → fc 120 → tanh → fc 84 → tanh → fc K; ``projection_dim`` > 0:
    fc K is MOON's :class:`ProjectionHead` on the 84 units."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, projection_dim: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            PadTo(32),
            nn.Conv2d(input_shape[0], 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, input_shape), 120), nn.Tanh(),
            nn.Linear(120, 84), nn.Tanh(),
            _final_layer(84, num_classes, projection_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def represent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the penultimate layer's activations (fc 84) -- or their projection, with a head --, the logits) in one
        pass (MOON's representation)."""
        return _represent(self.classifier[:-1](self.features(x).flatten(1)), self.classifier[-1])


@register_model("lenet5", fits=(IMAGE,), min_side=8)
def lenet5(input_shape: tuple[int, ...], num_classes: int, projection_dim: ProjectionDim = 0) -> nn.Module:
    return LeNet5(input_shape, num_classes, projection_dim)


# --------------------------------------------------------------------------- ResNets and VGG
NORMS = ("batch", "group")
Norm = Literal["batch", "group"]


def _norm_layer(norm: str, groups: int) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(min(int(groups), c), c)
    raise ValueError(f"model.norm='{norm}' is not known; valid choices: {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: 3x3 conv → norm → ReLU → 3x3 conv → norm, plus
    the identity or a 1x1-conv + norm projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (stride 1, no max-pool), stages of
    BasicBlocks (first block of each later stage has stride 2), global average
    pool, linear head. Init as torchvision: Kaiming-normal (fan_out) convs,
    norm weight 1 / bias 0."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...], blocks: tuple[int, ...],
        norm: str = "batch", norm_groups: int = 2,
    ):
        super().__init__()
        nl = _norm_layer(norm, norm_groups)
        self.pad = PadTo(32)
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nl(widths[0])
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, nl))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.pad(x))))
        out = self.layers(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("resnet18", fits=(IMAGE,), min_side=8)
def resnet18(input_shape: tuple[int, ...], num_classes: int, norm: Norm = "batch", norm_groups: Size = 2) -> nn.Module:
    """ResNet-18 for 32x32: widths 64-128-256-512, 2 blocks each (11.17 M
    parameters for 3 channels and 10 classes). ``norm=group`` uses
    GroupNorm(``norm_groups``, C) (2 groups: Hsieh et al. 2020, the usual FL choice)."""
    return ResNet(input_shape, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), norm, norm_groups)


@register_model("resnet20", fits=(IMAGE,), min_side=8)
def resnet20(input_shape: tuple[int, ...], num_classes: int, norm: Norm = "batch", norm_groups: Size = 2) -> nn.Module:
    """ResNet-20 (He et al. 2016, CIFAR): widths 16-32-64, 3 blocks each, 1x1
    projection shortcuts as in FedLAW's code (0.27 M parameters for 10 classes)."""
    return ResNet(input_shape, num_classes, (16, 32, 64), (3, 3, 3), norm, norm_groups)


VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = [PadTo(32)]
        cin = input_shape[0]
        for v in VGG11_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1)]
                layers += [nn.BatchNorm2d(int(v))] if batch_norm else []
                layers.append(nn.ReLU())
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@register_model("vgg11", fits=(IMAGE,), min_side=8)
def vgg11(input_shape: tuple[int, ...], num_classes: int, batch_norm: bool = False) -> nn.Module:
    """VGG-11 (configuration "A") for 32x32: 8 conv layers, 5 max-pools, then
    512-512-K fully connected (the CIFAR form used in FL papers, e.g. FedMA)."""
    return VGG(input_shape, num_classes, batch_norm)


# --------------------------------------------------------------------------- tokens
class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: embedding(vocab, 8) → 2-layer LSTM(256) → linear
    on the last step's output (next-character logits). Inputs are token ids; they
    arrive as floats through the shared training path and are cast back here."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))
        return self.head(out[:, -1])


@register_model("lstm", fits=(TOKENS,))
def lstm(
    input_shape: tuple[int, ...], num_classes: int, embed_dim: Size = 8, hidden: Size = 256, layers: Size = 2,
    vocab_size: Size | None = None,
) -> nn.Module:
    """``vocab_size`` defaults to ``num_classes`` (next-token prediction over one vocabulary)."""
    return CharLSTM(int(vocab_size or num_classes), num_classes, embed_dim, hidden, layers)
