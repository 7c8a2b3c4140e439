"""Built-in models, registered in :data:`suite.registry.MODELS`.

Every factory is ``factory(args, input_shape, num_classes) -> nn.Module`` with ``input_shape`` one
sample's shape (no batch dimension). Sizes that depend on the input (a flattened width) are
computed arithmetically, so every model can be built under ``with torch.device("meta"):`` to
count parameters or check shapes without allocating memory. A shape a model cannot take raises
ValueError saying what it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from suite.registry import MODELS

__all__ = [
    "CNN2",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "Cnn2Args",
    "MlpArgs",
    "PadShortcut",
    "ResNet",
    "ResNet18CifarArgs",
    "ResNet20Args",
    "ResNet50Args",
    "ResNet56Args",
    "SmallCnnArgs",
    "cnn2",
    "mlp",
    "resnet18_cifar",
    "resnet20",
    "resnet50",
    "resnet56",
    "small_cnn",
]


def _image_shape(model: str, input_shape: tuple[int, ...], min_side: int = 1) -> tuple[int, ...]:
    """(C, H, W) from ``input_shape``, or ValueError when it is not an image of that size."""
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d <= 0 for d in shape):
        raise ValueError(
            f"model {model!r} needs image inputs of shape (channels, height, width); got "
            f"{shape}. Pick an image dataset, or the 'mlp' model for flat vectors."
        )
    if min(shape[1:]) < min_side:
        raise ValueError(
            f"model {model!r} needs images at least {min_side}x{min_side}; got {shape[1]}x"
            f"{shape[2]}"
        )
    return shape


def _init_like_torchvision(model: nn.Module) -> None:
    # Kaiming-normal (fan_out, relu) convs and unit-scale, zero-shift BatchNorm, as torchvision's
    # ResNets; Linear layers keep PyTorch's default init, as there.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


# --------------------------------------------------------------------------------------------
# mlp, small_cnn, cnn2 (PyTorch default init, as in the codes these stand for)


@dataclass(frozen=True)
class MlpArgs:
    hidden: tuple[int, ...] = (128,)  # widths of the hidden layers, in order (() for linear)


@MODELS.register("mlp", config=MlpArgs)
def mlp(args: MlpArgs, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multi-layer perceptron on the flattened input: (Linear, ReLU) per hidden width, Linear."""
    shape = tuple(input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"model 'mlp' needs a non-empty positive input shape; got {shape}")
    if any(h <= 0 for h in args.hidden):
        raise ValueError(f"model 'mlp' hidden widths must be positive; got {args.hidden}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for h in args.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class SmallCnnArgs:
    width: int = 16  # channels of the first conv; the second has twice as many


@MODELS.register("small_cnn", config=SmallCnnArgs)
def small_cnn(args: SmallCnnArgs, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3x3 convs (w, 2w), ReLU, 2x2 max-pool, Linear: for 8x8 digits and 28x28 MNIST."""
    c, h, w = _image_shape("small_cnn", input_shape, min_side=2)
    if args.width <= 0:
        raise ValueError(f"model 'small_cnn' width must be positive; got {args.width}")
    k = args.width
    return nn.Sequential(
        nn.Conv2d(c, k, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(k, 2 * k, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * k * (h // 2) * (w // 2), num_classes),
    )


def _pool_kernel(h: int, w: int) -> tuple[int, int]:
    # 2x2 max-pool, except along a side already 1 wide, where it is the identity: that is what
    # lets CNN-2 take 8x8 digits (its second pool would otherwise see a 1x1 map and fail).
    return (2 if h >= 2 else 1, 2 if w >= 2 else 1)


class CNN2(nn.Module):
    """EventGraD's MNIST "CNN-2"; outputs log-probabilities (log_softmax).

    conv(C->10, 3x3), max-pool 2, ReLU; conv(10->20, 3x3), Dropout2d, max-pool 2, ReLU; flatten
    (500 wide for 28x28); Linear->50, ReLU, dropout 0.5; Linear->classes. Returning log_softmax
    is harmless to the loop's cross_entropy: log_softmax is idempotent, so cross-entropy on these
    log-probabilities equals the NLL loss the authors train with.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c, h, w = _image_shape("cnn2", input_shape, min_side=8)
        self.conv1 = nn.Conv2d(c, 10, kernel_size=3)
        h, w = h - 2, w - 2
        self.pool1 = nn.MaxPool2d(_pool_kernel(h, w))
        h, w = h // self.pool1.kernel_size[0], w // self.pool1.kernel_size[1]
        self.conv2 = nn.Conv2d(10, 20, kernel_size=3)
        self.conv2_drop = nn.Dropout2d()
        h, w = h - 2, w - 2
        self.pool2 = nn.MaxPool2d(_pool_kernel(h, w))
        h, w = h // self.pool2.kernel_size[0], w // self.pool2.kernel_size[1]
        self.flat_features = 20 * h * w
        self.fc1 = nn.Linear(self.flat_features, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.pool1(self.conv1(x)))
        x = F.relu(self.pool2(self.conv2_drop(self.conv2(x))))
        x = x.flatten(1)
        x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


@dataclass(frozen=True)
class Cnn2Args:
    """CNN-2 has no knobs."""


@MODELS.register("cnn2", config=Cnn2Args)
def cnn2(args: Cnn2Args, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """EventGraD's MNIST CNN-2 (two 3x3 convs, dropout, two Linear layers), log-softmax output."""
    return CNN2(input_shape, num_classes)


# --------------------------------------------------------------------------------------------
# CIFAR ResNets


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride``, zero-pad the new channels.

    Parameter-free, which is what makes ResNet-20/56 as small as published."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: projection (option B) or zero-pad (option A)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stem (stride 1, no max-pool), BasicBlock stages, avg-pool, FC.

    ``widths[i]`` channels and ``blocks[i]`` blocks in stage i; every stage after the first
    halves the resolution. ``option`` is the shortcut kind when shapes change ("A" or "B")."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        option: str,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, option))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_like_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.avgpool(self.layers(x))
        return self.fc(x.flatten(1))


@dataclass(frozen=True)
class ResNet18CifarArgs:
    """CIFAR ResNet-18 has no knobs."""


@dataclass(frozen=True)
class ResNet20Args:
    """ResNet-20 has no knobs."""


@dataclass(frozen=True)
class ResNet56Args:
    """ResNet-56 has no knobs."""


@MODELS.register("resnet18_cifar", config=ResNet18CifarArgs)
def resnet18_cifar(
    args: ResNet18CifarArgs, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """ResNet-18 for CIFAR (3x3 stem, no max-pool, projection shortcuts), 11.2M params."""
    c, _, _ = _image_shape("resnet18_cifar", input_shape)
    return CifarResNet(c, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), option="B")


@MODELS.register("resnet20", config=ResNet20Args)
def resnet20(args: ResNet20Args, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-20 (3x3 blocks at 16/32/64, option-A shortcuts), 0.27M."""
    c, _, _ = _image_shape("resnet20", input_shape)
    return CifarResNet(c, num_classes, (16, 32, 64), (3, 3, 3), option="A")


@MODELS.register("resnet56", config=ResNet56Args)
def resnet56(args: ResNet56Args, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-56 (9x3 blocks at 16/32/64, option-A shortcuts), 0.85M."""
    c, _, _ = _image_shape("resnet56", input_shape)
    return CifarResNet(c, num_classes, (16, 32, 64), (9, 9, 9), option="A")


# --------------------------------------------------------------------------------------------
# ImageNet ResNet-50


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: 1x1, 3x3 (carrying the stride), 1x1 (x4 wide)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet with Bottleneck blocks; same module names, so its
    ``state_dict`` keys match torchvision's (pretrained weights load as they are)."""

    def __init__(
        self,
        layers: tuple[int, ...],
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        _init_like_torchvision(self)
        if zero_init_residual:
            # Each residual branch starts at zero, so each block starts as the identity
            # (Goyal et al. 2017); torchvision's flag of the same name.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class ResNet50Args:
    zero_init_residual: bool = False  # start each block's last BN scale at 0 (block = identity)


@MODELS.register("resnet50", config=ResNet50Args)
def resnet50(args: ResNet50Args, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ImageNet ResNet-50 v1.5, torchvision's layout, 25.6M params for 1000 classes."""
    c, _, _ = _image_shape("resnet50", input_shape)
    return ResNet((3, 4, 6, 3), num_classes, c, args.zero_init_residual)
