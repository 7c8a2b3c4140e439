"""Built-in datasets, registered in :data:`suite.registry.DATASETS`.

Every factory is ``factory(args, data_dir) -> Dataset``. Two need no files: ``digits``
(scikit-learn's bundled 8x8 digits, the default) and ``synthetic`` (Gaussian classes). The others
read the layouts torchvision's downloaders write, so ``suite data download NAME --data-dir DIR``,
the torchvision one-liner and a hand-extracted archive all give the same tree (``DIR`` is
``--data-dir``):

``mnist``
    ``DIR/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    t10k-labels-idx1-ubyte}``, each plain or gzipped (``.gz``); the four files directly in ``DIR``
    are accepted too. IDX format: a 4-byte magic number (two zero bytes, a type code, 0x08 for
    unsigned bytes, and the number of dimensions), one big-endian uint32 per dimension, then the
    values in row-major order.
``fashion_mnist``
    The same four file names and format in ``DIR/FashionMNIST/raw/`` (or ``DIR``); with no
    ``--data-dir``, the gzipped files Debian's package ``dataset-fashion-mnist`` installs in
    ``/usr/share/datasets/fashion-mnist/``.
``cifar10``
    ``DIR/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch}``, Python pickles of
    dicts with ``b"data"`` (uint8, one row of 3072 per image: the 1024 red values, then green,
    then blue, each a row-major 32x32 plane) and ``b"labels"``.
``cifar100``
    ``DIR/cifar-100-python/{train, test}``, the same pickles with labels in ``b"fine_labels"``.
``imagenet``
    ImageFolder: ``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>`` (.jpg, .jpeg,
    .png in any case); the validation images must already be sorted into class folders.

File-based entries carry ``check`` in their registry meta: a cheap test, run by the launcher
before any process starts, that raises :class:`DataNotFoundError` saying what is missing and how to
get it. CIFAR pickles are read with a restricted unpickler that admits only what the format
holds (dicts, lists, str, bytes, int, numpy arrays): a file naming anything else is refused
before any of it runs.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from suite.errors import unwritable_folder
from suite.registry import DATASETS
from suite.tasks.data import DataNotFoundError, Dataset, TensorSplit

__all__ = [
    "IMAGE_EXTENSIONS",
    "Cifar10Args",
    "Cifar100Args",
    "DigitsArgs",
    "DownloadError",
    "ImageFolderSplit",
    "ImagenetArgs",
    "MnistArgs",
    "SyntheticArgs",
    "check_cifar10",
    "check_cifar100",
    "check_imagenet",
    "check_mnist",
    "cifar10",
    "cifar100",
    "digits",
    "download_dataset",
    "imagenet",
    "mnist",
    "random_crop_flip",
    "random_resized_crop_box",
    "read_idx",
    "synthetic",
]


class DownloadError(DataNotFoundError, RuntimeError):
    """A dataset could not be downloaded; the message says how to get it by hand.

    Both a RuntimeError and a DataNotFoundError, so the CLI reports it as a clean input error."""


# --------------------------------------------------------------------------------------------
# Messages for missing files


@dataclass(frozen=True)
class _Source:
    """How a file-based dataset is laid out and obtained, for error messages."""

    layout: str  # where the files go, with {dir} for the data directory
    torchvision: str | None  # torchvision.datasets class that downloads into that layout
    manual: str  # how to get the files by hand, with {dir}


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

_SOURCES = {
    "mnist": _Source(
        "{dir}/MNIST/raw/ (the four IDX files, plain or .gz)",
        "MNIST",
        "  or by hand: download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
        "  t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from\n"
        f"  {_MNIST_URL} (torchvision's mirror of http://yann.lecun.com/exdb/mnist/)\n"
        "  into {dir}/MNIST/raw/ (gunzipping them is optional)",
    ),
    "fashion_mnist": _Source(
        "{dir}/FashionMNIST/raw/ (the four IDX files, plain or .gz)",
        "FashionMNIST",
        "  or, on Debian or Ubuntu: sudo apt-get install dataset-fashion-mnist (or `make data`),\n"
        "  which puts them in /usr/share/datasets/fashion-mnist (read when --data-dir is unset)\n"
        "  or by hand: download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
        "  t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from\n"
        f"  {_FASHION_MNIST_URL} into {{dir}}/FashionMNIST/raw/",
    ),
    "cifar10": _Source(
        "{dir}/cifar-10-batches-py/",
        "CIFAR10",
        f"  or by hand: download {_CIFAR10_URL}\n"
        "  and extract it into {dir} (tar -xzf cifar-10-python.tar.gz -C {dir}),\n"
        "  which creates {dir}/cifar-10-batches-py/",
    ),
    "cifar100": _Source(
        "{dir}/cifar-100-python/",
        "CIFAR100",
        f"  or by hand: download {_CIFAR100_URL}\n"
        "  and extract it into {dir} (tar -xzf cifar-100-python.tar.gz -C {dir}),\n"
        "  which creates {dir}/cifar-100-python/",
    ),
    "imagenet": _Source(
        "{dir}/train/<class>/<image> and {dir}/val/<class>/<image>",
        None,
        "  ImageNet cannot be downloaded automatically (so `suite data download imagenet` only\n"
        "  prints these steps): it needs a free, non-commercial registration at\n"
        "  https://image-net.org/download.php. Download ILSVRC2012_img_train.tar and\n"
        "  ILSVRC2012_img_val.tar, then:\n"
        "  - extract the train tar into {dir}/train/ and each per-class tar inside it into\n"
        "    {dir}/train/<wnid>/ (e.g. {dir}/train/n01440764/);\n"
        "  - extract the val tar into {dir}/val/ and move its 50,000 images into class folders\n"
        "    {dir}/val/<wnid>/ (the val tar is flat; a common tool is valprep.sh from\n"
        "    https://github.com/soumith/imagenetloader.torch, run inside {dir}/val/).",
    ),
}


def _instructions(name: str, data_dir: str, downloading: bool = False) -> str:
    """How to get ``name`` into ``data_dir``; ``downloading`` leaves out the command that failed."""
    source = _SOURCES[name]
    shown = data_dir or "DIR"
    lines = ["To get the data:"]
    if source.torchvision:
        if not downloading:
            lines.append(f"  suite data download {name} --data-dir {shown}")
        lead = "with" if downloading else "or, with"
        lines.append(
            f'  {lead} torchvision installed: python -c "import torchvision; '
            f"torchvision.datasets.{source.torchvision}('{shown}', download=True)\""
        )
    lines.append(source.manual.format(dir=shown))
    return "\n".join(lines)


def _require_data_dir(name: str, data_dir: str) -> str:
    """The data directory, user-expanded; an empty one raises saying --data-dir is required."""
    if not data_dir:
        layout = _SOURCES[name].layout.format(dir="DIR")
        raise DataNotFoundError(
            f"dataset {name!r} reads files from disk, so --data-dir is required "
            f"(the folder holding {layout}).\n{_instructions(name, '')}"
        )
    return os.path.expanduser(data_dir)


def _not_found(name: str, data_dir: str, looked_for: Sequence[str], why: str = "") -> NoReturn:
    lines = [f"dataset {name!r}: data not found under --data-dir {data_dir}."]
    if why:
        lines.append(why)
    lines.append("Looked for:")
    lines += [f"  {path}" for path in looked_for]
    lines.append(_instructions(name, data_dir))
    raise DataNotFoundError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Shared preprocessing


def _float_preprocess(
    mean: Sequence[float] | None, std: Sequence[float] | None, scale: float
) -> Callable[[Tensor, bool, torch.Generator | None], Tensor]:
    """x -> float32 (x / scale - mean) / std per channel (no normalisation when mean is None)."""

    def preprocess(x: Tensor, train: bool, generator: torch.Generator | None) -> Tensor:
        out = x.to(torch.float32)
        if scale != 1.0:
            out = out / scale
        if mean is not None and std is not None:
            shape = (1, len(mean)) + (1,) * (out.dim() - 2)
            m = torch.tensor(mean, dtype=torch.float32, device=out.device).view(shape)
            s = torch.tensor(std, dtype=torch.float32, device=out.device).view(shape)
            out = (out - m) / s
        return out

    return preprocess


def random_crop_flip(x: Tensor, generator: torch.Generator | None, padding: int = 4) -> Tensor:
    """Per-sample random crop of the zero-padded batch, then horizontal flip with p = 0.5.

    Equals torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` per image, but
    vectorised: one gather over the batch. ``x`` is (B, C, H, W) of any dtype; the randomness
    comes only from ``generator`` (drawn on its device, then moved to ``x``'s).
    """
    b, c, h, w = x.shape
    rng_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=rng_device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=rng_device)
    flip = torch.rand(b, generator=generator, device=rng_device) < 0.5
    top, left, flip = top.to(x.device), left.to(x.device), flip.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))  # zeros, in raw pixel space
    row_offsets = torch.arange(h, device=x.device)
    col_offsets = torch.arange(w, device=x.device)
    rows = top[:, None] + row_offsets  # (B, H)
    # A flipped crop reads its columns right to left.
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - col_offsets, col_offsets)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


# --------------------------------------------------------------------------------------------
# digits


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (1797, 8, 8), labels int64) of scikit-learn's bundled digits.

    Read straight from the CSV that scikit-learn ships (what ``load_digits`` parses), because
    importing scikit-learn costs about 1.7 s per process; ``load_digits`` is the fallback if the
    file is not where scikit-learn has always kept it."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def _stratified_test_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of ceil(fraction * n) random test samples (scikit-learn's count), shared
    among classes in proportion to their sizes (largest remainders get the leftovers)."""
    classes, counts = np.unique(y, return_counts=True)
    exact = fraction * counts
    quota = np.floor(exact).astype(int)
    leftover = math.ceil(fraction * len(y)) - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c, k in zip(classes, quota, strict=True):
        mask[rng.permutation(np.flatnonzero(y == c))[:k]] = True
    return mask


@dataclass(frozen=True)
class DigitsArgs:
    test_fraction: float = 0.2  # share of the 1797 images held out (stratified, fixed split)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"digits test_fraction must be in (0, 1), got {self.test_fraction}")


@DATASETS.register(
    "digits",
    config=DigitsArgs,
    description="scikit-learn's 1797 8x8 handwritten digits, 10 classes (offline, real)",
    check=None,
)
def digits(args: DigitsArgs, data_dir: str) -> Dataset:
    """scikit-learn's bundled 8x8 digits with a fixed stratified split (seed 0, not the run's)."""
    images, y = _digits_arrays()
    x = (images / 16.0)[:, None, :, :]  # pixel values are 0..16
    # The split is part of the task, not of the run: a fixed seed keeps the test set the same
    # whatever --seed says, so runs with different seeds are comparable.
    test = _stratified_test_mask(y, args.test_fraction, seed=0)
    x_train, x_test, y_train, y_test = x[~test], x[test], y[~test], y[test]
    mean, std = float(x_train.mean()), float(x_train.std())

    def preprocess(batch: Tensor, train: bool, generator: torch.Generator | None) -> Tensor:
        return (batch.to(torch.float32) - mean) / std

    return Dataset(
        name="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        train=TensorSplit(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=TensorSplit(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        preprocess=preprocess,
    )


# --------------------------------------------------------------------------------------------
# synthetic


@dataclass(frozen=True)
class SyntheticArgs:
    input_shape: tuple[int, ...] = (64,)  # shape of one sample
    num_classes: int = 10  # number of Gaussian classes
    train_size: int = 4096  # training samples
    test_size: int = 1024  # test samples
    noise: float = 1.0  # std of the per-sample noise around the class mean (means are N(0, I))
    data_seed: int = 0  # seeds the class means and samples (independent of the run seed)


@DATASETS.register(
    "synthetic",
    config=SyntheticArgs,
    description="Gaussian classes of any shape and size, for speed and shape tests",
    check=None,
)
def synthetic(args: SyntheticArgs, data_dir: str) -> Dataset:
    """Class means drawn from N(0, I); samples are mean[y] + noise * N(0, I); balanced labels."""
    shape = tuple(args.input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"synthetic input_shape must be non-empty and positive, got {shape}")
    if args.num_classes < 2:
        raise ValueError(f"synthetic num_classes must be at least 2, got {args.num_classes}")
    if args.train_size <= 0 or args.test_size <= 0:
        raise ValueError(
            f"synthetic train_size and test_size must be positive, "
            f"got {args.train_size} and {args.test_size}"
        )
    if not args.noise >= 0:
        raise ValueError(f"synthetic noise is a standard deviation >= 0, got {args.noise}")
    gen = torch.Generator().manual_seed(args.data_seed)
    means = torch.randn((args.num_classes, *shape), generator=gen)

    def split(n: int) -> TensorSplit:
        # Balanced: every class appears n // classes or one more times, in random order.
        y = (torch.arange(n) % args.num_classes)[torch.randperm(n, generator=gen)]
        x = means[y] + args.noise * torch.randn((n, *shape), generator=gen)
        return TensorSplit(x, y)

    train = split(args.train_size)
    test = split(args.test_size)
    return Dataset(
        name="synthetic",
        input_shape=shape,
        num_classes=args.num_classes,
        train=train,
        test=test,
        preprocess=_float_preprocess(None, None, 1.0),
    )


# --------------------------------------------------------------------------------------------
# MNIST

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain, or gzipped when ``path`` ends in .gz) into a native-order array.

    Raises ValueError naming the file when the magic number is wrong or unexpected, or when the
    byte count does not match the dimensions in the header.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise ValueError(f"{path}: cannot read ({err})") from err
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected two zero bytes, a type code "
            f"such as 0x08 for unsigned bytes, and the number of dimensions); "
            f"is this really an IDX file?"
        )
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path}: IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(0x00000803 is an image file, 0x00000801 a label file)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: {len(data)} bytes, but the header's dimensions {dims} need {expected}; "
            f"the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native order; also a writable copy


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


def _find_idx(folders: Sequence[str]) -> tuple[dict[str, str] | None, list[str]]:
    """The four MNIST-named files (plain or .gz) in the first folder holding all of them, or
    None; and the paths looked for."""
    looked_for = []
    for folder in folders:
        found = {}
        for key, base in _MNIST_FILES.items():
            path = os.path.join(folder, base)
            for candidate in (path, path + ".gz"):
                if os.path.isfile(candidate):
                    found[key] = candidate
                    break
            else:
                looked_for.append(f"{path} (or {path}.gz)")
        if len(found) == len(_MNIST_FILES):
            return found, looked_for
    return None, looked_for


def _idx_files(name: str, folder: str, data_dir: str) -> dict[str, str]:
    """Paths of the four IDX files of ``name``: torchvision's layout ``DIR/<folder>/raw/``
    first, then ``data_dir`` itself."""
    root = _require_data_dir(name, data_dir)
    found, looked_for = _find_idx([os.path.join(root, folder, "raw"), root])
    if found is None:
        _not_found(name, data_dir, looked_for)
    return found


def _mnist_files(data_dir: str) -> dict[str, str]:
    return _idx_files("mnist", "MNIST", data_dir)


def check_mnist(data_dir: str) -> None:
    """Raise DataNotFoundError unless the four MNIST files are where mnist looks."""
    _mnist_files(data_dir)


@dataclass(frozen=True)
class MnistArgs:
    normalize: bool = True  # (x/255 - 0.1307) / 0.3081; False feeds x/255


@DATASETS.register(
    "mnist",
    config=MnistArgs,
    description="MNIST 28x28 handwritten digits, 60k/10k (needs --data-dir)",
    check=check_mnist,
)
def mnist(args: MnistArgs, data_dir: str) -> Dataset:
    """MNIST from its IDX files, stored as uint8 (N, 1, 28, 28); no augmentation."""
    mean, std = ((0.1307,), (0.3081,)) if args.normalize else (None, None)
    return _idx_dataset("mnist", _mnist_files(data_dir), mean, std)


def _idx_dataset(
    name: str, files: dict[str, str], mean: Sequence[float] | None, std: Sequence[float] | None
) -> Dataset:
    """A 10-class dataset from the four MNIST-format files, images stored as uint8 (N, 1, H, W)."""

    def load(images_key: str, labels_key: str) -> TensorSplit:
        images = read_idx(files[images_key], _IDX_IMAGES)
        labels = read_idx(files[labels_key], _IDX_LABELS)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{name}: {files[images_key]} holds images of shape {images.shape} but "
                f"{files[labels_key]} labels of shape {labels.shape}; expected (N, rows, cols) "
                f"and (N,)"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{name}: {files[labels_key]} has label {labels.max()}, not 0..9")
        return TensorSplit(
            torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
        )

    train = load("train_images", "train_labels")
    test = load("test_images", "test_labels")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(f"{name}: train images {train.x.shape[1:]} but test {test.x.shape[1:]}")
    return Dataset(
        name=name,
        input_shape=tuple(train.x.shape[1:]),
        num_classes=10,
        train=train,
        test=test,
        preprocess=_float_preprocess(mean, std, 255.0),
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST

# Where Debian's package dataset-fashion-mnist installs the four files (gzipped); read when no
# --data-dir is given.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


def _fashion_mnist_files(data_dir: str) -> dict[str, str]:
    """The four Fashion-MNIST files: under ``data_dir`` as for mnist (``FashionMNIST/raw/``,
    torchvision's layout, or the folder itself), or with no ``data_dir`` the system copy."""
    if data_dir:
        return _idx_files("fashion_mnist", "FashionMNIST", data_dir)
    found, looked_for = _find_idx([FASHION_MNIST_SYSTEM_DIR])
    if found is None:
        lines = [
            "dataset 'fashion_mnist': no --data-dir given, and the system copy is not "
            f"installed in {FASHION_MNIST_SYSTEM_DIR}.",
            "Looked for:",
            *(f"  {path}" for path in looked_for),
            _instructions("fashion_mnist", ""),
        ]
        raise DataNotFoundError("\n".join(lines))
    return found


def check_fashion_mnist(data_dir: str) -> None:
    """Raise DataNotFoundError unless the four Fashion-MNIST files are where it looks."""
    _fashion_mnist_files(data_dir)


@dataclass(frozen=True)
class FashionMnistArgs:
    normalize: bool = True  # (x/255 - 0.2860) / 0.3530 (the training set's); False feeds x/255


@DATASETS.register(
    "fashion_mnist",
    config=FashionMnistArgs,
    description="Fashion-MNIST 28x28 clothing images, 60k/10k, MNIST's format and size "
    "(--data-dir, or Debian's dataset-fashion-mnist package)",
    check=check_fashion_mnist,
)
def fashion_mnist(args: FashionMnistArgs, data_dir: str) -> Dataset:
    """Fashion-MNIST (Zalando, 2017) from its IDX files: a drop-in for MNIST, same file format,
    sizes and 10 classes, that can be installed here; stored as uint8 (N, 1, 28, 28)."""
    mean, std = ((0.2860,), (0.3530,)) if args.normalize else (None, None)
    return _idx_dataset("fashion_mnist", _fashion_mnist_files(data_dir), mean, std)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


@dataclass(frozen=True)
class _CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR10 = _CifarLayout(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    b"labels",
    10,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)
_CIFAR100 = _CifarLayout(
    "cifar100",
    "cifar-100-python",
    ("train",),
    "test",
    b"fine_labels",
    100,
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
)


def _cifar_paths(layout: _CifarLayout, data_dir: str) -> tuple[list[str], str]:
    root = os.path.join(_require_data_dir(layout.name, data_dir), layout.folder)
    train = [os.path.join(root, f) for f in layout.train_files]
    test = os.path.join(root, layout.test_file)
    missing = [p for p in [*train, test] if not os.path.isfile(p)]
    if missing:
        _not_found(layout.name, data_dir, missing)
    return train, test


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that no CIFAR batch holds."""


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes (always latin1), and no
    other codec."""
    if encoding != "latin1" or not isinstance(text, str):
        raise _RefusedGlobal(f"_codecs.encode with {encoding!r} not allowed")
    return text.encode("latin1")


try:  # where numpy keeps the functions its array pickles name (numpy >= 2; then 1.x)
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# Every global a CIFAR batch may name: numpy arrays (as written by the original Python 2
# archives and by numpy 1.x or 2.x at any protocol) and Python 3's way of writing bytes at
# protocol 2. Dicts, lists, str, bytes and int need no global at all.
_CIFAR_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR format holds (see ``_CIFAR_GLOBALS``): anything else, e.g.
    ``os.system``, is refused before it is looked up, so no code in the file runs."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"global {module}.{name} not allowed") from None

    def persistent_load(self, pid: object) -> object:
        raise _RefusedGlobal("persistent ids not allowed")


def _read_cifar_pickle(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (uint8 (n, 3, 32, 32), int64 (n,)).

    Read with a restricted unpickler: a file that names anything beyond numpy arrays is refused
    ("refusing to load FILE"), a damaged one is reported by name; both are ValueErrors."""
    with open(path, "rb") as f:
        try:
            # The archives hold Python 2 pickles, whose str values we keep as bytes.
            entry = _CifarUnpickler(f, encoding="bytes").load()
        except _RefusedGlobal as err:
            raise ValueError(
                f"refusing to load {path}: it is not a plain CIFAR batch ({err}); only dicts, "
                f"lists, str, bytes, int and numpy arrays are read"
            ) from None
        except Exception as err:  # a damaged pickle can raise almost anything
            raise ValueError(
                f"cannot read {path}: not a valid CIFAR python pickle (damaged or truncated? "
                f"{type(err).__name__}: {err}); download it again"
            ) from None
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        keys = sorted(map(repr, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and {label_key!r}, got {keys}")
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{path}: b'data' or {label_key!r} is not numeric: {err}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path}: b'data' has shape {data.shape} and there are {len(labels)} labels; "
            f"expected (n, 3072) and n"
        )
    # Each row is the R plane, then G, then B, each row-major 32x32: exactly C, H, W order.
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(layout: _CifarLayout, augment: bool, normalize: bool, data_dir: str) -> Dataset:
    train_paths, test_path = _cifar_paths(layout, data_dir)
    parts = [_read_cifar_pickle(p, layout.label_key) for p in train_paths]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    x_test, y_test = _read_cifar_pickle(test_path, layout.label_key)
    for path, y in ((train_paths[0], y_train), (test_path, y_test)):
        if y.size and (y.min() < 0 or y.max() >= layout.num_classes):
            raise ValueError(f"{path}: labels outside 0..{layout.num_classes - 1}")
    # normalize=False feeds raw 0..255 floats, which is what the EventGraD authors' code does.
    mean, std, scale = (layout.mean, layout.std, 255.0) if normalize else (None, None, 1.0)
    to_float = _float_preprocess(mean, std, scale)

    def preprocess(x: Tensor, train: bool, generator: torch.Generator | None) -> Tensor:
        if train and augment:
            # Crop and flip the raw pixels, so the padding is black (0) as in torchvision's
            # RandomCrop on PIL images, before normalisation.
            x = random_crop_flip(x, generator, padding=4)
        return to_float(x, train, generator)

    return Dataset(
        name=layout.name,
        input_shape=(3, 32, 32),
        num_classes=layout.num_classes,
        train=TensorSplit(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=TensorSplit(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        preprocess=preprocess,
    )


def check_cifar10(data_dir: str) -> None:
    """Raise DataNotFoundError unless the six CIFAR-10 batch files are present."""
    _cifar_paths(_CIFAR10, data_dir)


def check_cifar100(data_dir: str) -> None:
    """Raise DataNotFoundError unless CIFAR-100's train and test files are present."""
    _cifar_paths(_CIFAR100, data_dir)


@dataclass(frozen=True)
class Cifar10Args:
    augment: bool = True  # train only: zero-pad 4, random 32x32 crop, horizontal flip p=0.5
    normalize: bool = True  # per-channel mean/std on x/255; False feeds raw 0..255 (EventGraD)


@dataclass(frozen=True)
class Cifar100Args:
    augment: bool = True  # train only: zero-pad 4, random 32x32 crop, horizontal flip p=0.5
    normalize: bool = True  # per-channel mean/std on x/255; False feeds raw 0..255 (EventGraD)


@DATASETS.register(
    "cifar10",
    config=Cifar10Args,
    description="CIFAR-10 32x32 colour images, 10 classes, 50k/10k (needs --data-dir)",
    check=check_cifar10,
)
def cifar10(args: Cifar10Args, data_dir: str) -> Dataset:
    """CIFAR-10 from the python pickles, stored as uint8 (N, 3, 32, 32)."""
    return _cifar(_CIFAR10, args.augment, args.normalize, data_dir)


@DATASETS.register(
    "cifar100",
    config=Cifar100Args,
    description="CIFAR-100 32x32 colour images, 100 fine classes, 50k/10k (needs --data-dir)",
    check=check_cifar100,
)
def cifar100(args: Cifar100Args, data_dir: str) -> Dataset:
    """CIFAR-100 (fine labels) from the python pickles, stored as uint8 (N, 3, 32, 32)."""
    return _cifar(_CIFAR100, args.augment, args.normalize, data_dir)


# --------------------------------------------------------------------------------------------
# ImageNet (ImageFolder)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Inception-style crop (top, left, h, w), as torchvision's ``RandomResizedCrop.get_params``.

    Ten tries at a random area share in ``scale`` and log-uniform aspect ratio in ``ratio``; if
    none fits, the largest centred crop whose aspect ratio is clamped into ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*scale, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_normalized_tensor(img: Image.Image) -> Tensor:
    array = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    array = (array - _IMAGENET_MEAN) / _IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split of an ImageFolder tree: ``(float32 (3, S, S) normalised image, int label)``.

    Train: random resized crop to ``image_size`` then horizontal flip with p = 0.5. Test: resize
    the shorter side to round(image_size * 256 / 224), then centre-crop ``image_size``. The
    train randomness uses torch's global RNG, which DataLoader seeds differently in each worker
    (a generator stored here would be copied to every worker and repeat the same crops).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        image_size: int,
        train: bool,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.image_size = image_size
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as opened:
            img = opened.convert("RGB")
        img = self._train_transform(img) if self.train else self._test_transform(img)
        return _to_normalized_tensor(img), label

    def _train_transform(self, img: Image.Image) -> Image.Image:
        size = self.image_size
        top, left, h, w = random_resized_crop_box(img.height, img.width)
        img = img.resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )
        if torch.rand(1).item() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def _test_transform(self, img: Image.Image) -> Image.Image:
        size = self.image_size
        short_target = round(size * 256 / 224)
        width, height = img.size
        # Like torchvision's Resize(int): the longer side is truncated, not rounded.
        if width <= height:
            new_w, new_h = short_target, int(short_target * height / width)
        else:
            new_w, new_h = int(short_target * width / height), short_target
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        top = round((new_h - size) / 2)
        left = round((new_w - size) / 2)
        return img.crop((left, top, left + size, top + size))


def _subfolders(path: str) -> list[str]:
    # Hidden folders (.ipynb_checkpoints and the like) are not classes.
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _imagenet_layout(data_dir: str) -> tuple[str, str, list[str]]:
    """(train dir, val dir, classes) after the cheap layout checks; raises DataNotFoundError."""
    root = _require_data_dir("imagenet", data_dir)
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    missing = [p + os.sep for p in (train_dir, val_dir) if not os.path.isdir(p)]
    if missing:
        _not_found("imagenet", data_dir, missing)
    classes = _subfolders(train_dir)
    if not classes:
        _not_found(
            "imagenet",
            data_dir,
            [os.path.join(train_dir, "<class>", "<image>")],
            why=f"{train_dir} has no class folders.",
        )
    val_classes = _subfolders(val_dir)
    if not val_classes:
        _not_found(
            "imagenet",
            data_dir,
            [os.path.join(val_dir, "<class>", "<image>")],
            why=f"{val_dir} has no class folders: the validation images must already be sorted "
            f"into one folder per class, named as in train/ (the official val tar is flat).",
        )
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        _not_found(
            "imagenet",
            data_dir,
            [os.path.join(train_dir, name) + os.sep for name in unknown[:5]],
            why=f"{val_dir} has class folders that train/ lacks ({shown}); val must use "
            f"train's class names.",
        )
    return train_dir, val_dir, classes


def _scan_images(folder: str, classes: Sequence[str]) -> list[tuple[str, int]]:
    samples = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            continue
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, filename), label))
    return samples


def check_imagenet(data_dir: str) -> None:
    """Raise DataNotFoundError unless train/ and val/ exist with matching class folders."""
    _imagenet_layout(data_dir)


@dataclass(frozen=True)
class ImagenetArgs:
    image_size: int = 224  # side of the square crop fed to the model


@DATASETS.register(
    "imagenet",
    config=ImagenetArgs,
    description="ImageNet (ILSVRC2012) as an ImageFolder tree, read by a DataLoader "
    "(needs --data-dir)",
    check=check_imagenet,
)
def imagenet(args: ImagenetArgs, data_dir: str) -> Dataset:
    """ImageFolder train/ and val/ trees, decoded with Pillow per sample."""
    if args.image_size <= 0:
        raise ValueError(f"imagenet image_size must be positive, got {args.image_size}")
    train_dir, val_dir, classes = _imagenet_layout(data_dir)
    train = _scan_images(train_dir, classes)
    test = _scan_images(val_dir, classes)
    for folder, samples in ((train_dir, train), (val_dir, test)):
        if not samples:
            _not_found(
                "imagenet",
                data_dir,
                [os.path.join(folder, "<class>", "*" + ext) for ext in IMAGE_EXTENSIONS],
                why=f"{folder} has class folders but no .jpg/.jpeg/.png images in them.",
            )
    return Dataset(
        name="imagenet",
        input_shape=(3, args.image_size, args.image_size),
        num_classes=len(classes),
        train=ImageFolderSplit(train, classes, args.image_size, train=True),
        test=ImageFolderSplit(test, classes, args.image_size, train=False),
    )


# --------------------------------------------------------------------------------------------
# Downloads

_CHECKS: dict[str, Callable[[str], None]] = {
    "mnist": check_mnist,
    "fashion_mnist": check_fashion_mnist,
    "cifar10": check_cifar10,
    "cifar100": check_cifar100,
    "imagenet": check_imagenet,
}
_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def download_dataset(name: str, data_dir: str) -> None:
    """Fetch a dataset into the layout its factory reads (via torchvision, when importable).

    Raises :class:`DownloadError` with the manual instructions when that is impossible: no
    torchvision, a failed download, ImageNet (which needs registration), or no ``data_dir``.
    """
    entry = DATASETS.get(name)  # unknown names raise UnknownNameError listing the choices
    base = entry.base or entry.name
    if base in ("digits", "synthetic"):
        print(f"{name}: nothing needs downloading (the data is built in or generated)")
        return
    if base not in _SOURCES:
        raise DownloadError(f"dataset {name!r} has no downloader; see its documentation")
    if not data_dir:
        raise DownloadError(
            f"downloading {name!r} needs --data-dir (the folder to download into).\n"
            f"{_instructions(base, '', downloading=True)}"
        )
    if base == "imagenet":
        raise DownloadError(
            f"dataset 'imagenet' cannot be downloaded here.\n"
            f"{_instructions(base, data_dir, downloading=True)}"
        )
    root = os.path.expanduser(data_dir)
    why = unwritable_folder(root)  # before the downloader: the one error the user can fix here
    if why is not None:
        raise DownloadError(
            f"cannot download {name!r} into {root}: {why}; valid: a --data-dir this user can "
            "create and write"
        )
    try:
        import torchvision
    except Exception as err:  # not installed, or installed but broken against this torch
        raise DownloadError(
            f"cannot download {name!r}: torchvision is not importable ({type(err).__name__}: "
            f"{err}). Install torchvision, or fetch the files by hand.\n"
            f"{_instructions(base, data_dir, downloading=True)}"
        ) from err
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as err:  # a read-only disk, say
        raise DownloadError(f"cannot download {name!r} into {root}: {err}") from None
    try:
        getattr(torchvision.datasets, _TORCHVISION_CLASSES[base])(root, train=True, download=True)
    except Exception as err:
        raise DownloadError(
            f"downloading {name!r} with torchvision failed ({type(err).__name__}: {err}).\n"
            f"{_instructions(base, data_dir, downloading=True)}"
        ) from err
    _CHECKS[base](data_dir)
