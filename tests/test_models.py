"""Models: shapes on the meta device, real forwards on CPU, exact published parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from suite.registry import MODELS
from suite.tasks.models import CNN2, Bottleneck, PadShortcut

# A fitting input shape and class count per registered model; resnet50 gets 64x64 for speed.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "mlp": ((1, 8, 8), 10),
    "small_cnn": ((1, 8, 8), 10),
    "cnn2": ((1, 8, 8), 10),
    "resnet18_cifar": ((3, 32, 32), 10),
    "resnet20": ((3, 32, 32), 10),
    "resnet56": ((3, 32, 32), 100),
    "resnet50": ((3, 64, 64), 1000),
}


def build(name: str, shape: tuple[int, ...], classes: int, **knobs: object) -> nn.Module:
    entry = MODELS.get(name)
    return entry.obj(entry.make_config(**knobs), shape, classes)


def shape_for(name: str) -> tuple[tuple[int, ...], int]:
    if name not in SHAPES:
        pytest.fail(f"model {name!r} is registered but SHAPES in {__file__} has no input for it")
    return SHAPES[name]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_builds_and_runs_on_meta(name: str) -> None:
    shape, classes = shape_for(name)
    with torch.device("meta"):
        model = build(name, shape, classes)
        out = model(torch.empty(3, *shape))
    assert out.shape == (3, classes)
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_cpu_forward_and_backward(name: str) -> None:
    shape, classes = shape_for(name)
    torch.manual_seed(0)
    model = build(name, shape, classes)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval mode: no dropout randomness


@pytest.mark.parametrize(
    ("name", "shape", "classes", "expected"),
    [
        ("resnet18_cifar", (3, 32, 32), 10, 11_173_962),
        # Option-A (parameter-free) shortcuts, as He et al. 2016 use on CIFAR; the paper's
        # 0.27M / 0.85M. (272,474 and 855,770 are the counts with 1x1 projection shortcuts.)
        ("resnet20", (3, 32, 32), 10, 269_722),
        ("resnet56", (3, 32, 32), 10, 853_018),
        ("resnet50", (3, 224, 224), 1000, 25_557_032),
        # conv 1->10 3x3, conv 10->20 3x3, 20x5x5 features (28 -> 26 -> 13 -> 11 -> 5) -> 50 -> 10
        ("cnn2", (1, 28, 28), 10, (9 * 10 + 10) + (10 * 9 * 20 + 20) + (500 * 50 + 50) + 510),
        ("mlp", (1, 8, 8), 10, 64 * 128 + 128 + 128 * 10 + 10),
    ],
)
def test_exact_parameter_counts(
    name: str, shape: tuple[int, ...], classes: int, expected: int
) -> None:
    with torch.device("meta"):
        assert n_params(build(name, shape, classes)) == expected


def test_option_a_shortcuts_have_no_parameters_and_pad_channels() -> None:
    with torch.device("meta"):
        model = build("resnet20", (3, 32, 32), 10)
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2  # one per stage transition (16->32, 32->64)
    assert all(n_params(m) == 0 for m in shortcuts)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_resnet18_cifar_uses_projection_shortcuts_and_no_maxpool() -> None:
    with torch.device("meta"):
        model = build("resnet18_cifar", (3, 32, 32), 10)
    projections = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert len(projections) == 3
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_cnn2_flatten_width_and_log_probabilities() -> None:
    mnist_net = build("cnn2", (1, 28, 28), 10)
    assert isinstance(mnist_net, CNN2) and mnist_net.flat_features == 500
    assert mnist_net.fc1.in_features == 500
    digits_net = build("cnn2", (1, 8, 8), 10)
    assert digits_net.flat_features == 20  # second pool is the identity on a 1x1 map
    mnist_net.eval()
    with torch.no_grad():
        out = mnist_net(torch.randn(4, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)
    # Cross-entropy on log-probabilities equals NLL: the loop's loss is the authors' loss.
    y = torch.tensor([0, 3, 9, 1])
    assert torch.allclose(
        nn.functional.cross_entropy(out, y), nn.functional.nll_loss(out, y), atol=1e-6
    )


def test_resnet50_matches_torchvision_layout() -> None:
    with torch.device("meta"):
        model = build("resnet50", (3, 224, 224), 1000)
    keys = model.state_dict().keys()
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert len(keys) == 320  # torchvision's resnet50 state_dict has 320 entries
    assert model.fc.weight.shape == (1000, 2048)
    block = model.layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # v1.5
    assert model.maxpool.kernel_size == 3 and model.conv1.kernel_size == (7, 7)


def test_resnet50_zero_init_residual() -> None:
    model = build("resnet50", (3, 32, 32), 10, zero_init_residual=True)
    bn3 = [m.bn3.weight for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(bn3) == 16 and all(not w.any() for w in bn3)
    assert model.bn1.weight.eq(1).all()
    default = build("resnet50", (3, 32, 32), 10)
    assert default.layer1[0].bn3.weight.eq(1).all()


def test_resnet_init_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    model = build("resnet18_cifar", (3, 32, 32), 10)
    conv = model.layers[3][0].conv1  # 256 -> 512, 3x3: fan_out = 512 * 9, fan_in = 256 * 9
    assert conv.weight.shape == (512, 256, 3, 3)
    expected = math.sqrt(2.0 / (512 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    fan_in = math.sqrt(2.0 / (256 * 9))  # 41% larger: what mode="fan_in" would give
    assert conv.weight.std().item() != pytest.approx(fan_in, rel=0.2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.weight.eq(1).all() and m.bias.eq(0).all() for m in bns)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet20", (3072,)),
        ("resnet18_cifar", (32, 32)),
        ("resnet50", (3, 0, 224)),
        ("small_cnn", (64,)),
        ("small_cnn", (1, 1, 8)),
        ("cnn2", (1, 7, 7)),
        ("cnn2", (784,)),
        ("mlp", ()),
    ],
)
def test_bad_input_shape_raises_value_error(name: str, shape: tuple[int, ...]) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=repr(name)):
        build(name, shape, 10)


def test_small_models_train_on_a_fixed_batch() -> None:
    # Each small model can fit 16 random samples: the wiring from input to loss is sound.
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    for name in ("mlp", "small_cnn"):
        model = build(name, (1, 8, 8), 10)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        assert loss.item() < 0.1, name
