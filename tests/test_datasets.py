"""Datasets: tiny files in the real on-disk formats, written here and read back."""

from __future__ import annotations

import codecs
import gzip
import itertools
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from suite import cli
from suite.registry import DATASETS
from suite.tasks import datasets
from suite.tasks.data import DataNotFoundError, Dataset, TensorSplit
from suite.tasks.datasets import (
    DownloadError,
    ImageFolderSplit,
    download_dataset,
    random_crop_flip,
    random_resized_crop_box,
    read_idx,
)


def load(name: str, data_dir: str | Path = "", **knobs: object) -> Dataset:
    """Build a dataset the way the loop does: through the registry."""
    entry = DATASETS.get(name)
    return entry.obj(entry.make_config(**knobs), str(data_dir))


def check(name: str, data_dir: str | Path) -> None:
    DATASETS.get(name).meta["check"](str(data_dir))


# --------------------------------------------------------------------------------------------
# MNIST (IDX)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


MNIST_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def mnist_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    train_x[0, 0, 1] = 7  # a known pixel: image 0, row 0, column 1
    train_x[2, 27, 0] = 250  # image 2, last row, first column
    return {
        "train_x": train_x,
        "train_y": np.array([3, 1, 4], dtype=np.uint8),
        "test_x": rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8),
        "test_y": np.array([1, 5], dtype=np.uint8),
    }


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in MNIST_NAMES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize(
    ("subdir", "gz"), list(itertools.product(["MNIST/raw", ""], [False, True]))
)
def test_mnist_reads_idx_plain_and_gz_in_both_layouts(
    tmp_path: Path, subdir: str, gz: bool
) -> None:
    arrays = mnist_arrays()
    write_mnist(tmp_path / subdir if subdir else tmp_path, arrays, gz)
    check("mnist", tmp_path)  # no error
    ds = load("mnist", tmp_path)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert isinstance(ds.train, TensorSplit) and isinstance(ds.test, TensorSplit)
    assert ds.train.x.shape == (3, 1, 28, 28) and ds.train.x.dtype == torch.uint8
    assert ds.test.x.shape == (2, 1, 28, 28)
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays["train_x"]))
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(arrays["test_x"]))
    assert int(ds.train.x[0, 0, 0, 1]) == 7 and int(ds.train.x[2, 0, 27, 0]) == 250
    assert ds.train.y.tolist() == [3, 1, 4] and ds.test.y.tolist() == [1, 5]
    assert ds.train.y.dtype == torch.int64


def test_mnist_preprocess_normalises_or_scales(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", mnist_arrays(), gz=False)
    for normalize, expected in ((True, (7 / 255 - 0.1307) / 0.3081), (False, 7 / 255)):
        ds = load("mnist", tmp_path, normalize=normalize)
        out = ds.preprocess(ds.train.x, True, torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32 and out.shape == (3, 1, 28, 28)
        assert out[0, 0, 0, 1].item() == pytest.approx(expected, rel=1e-5)
        # No augmentation: train and test preprocessing agree.
        assert torch.equal(out, ds.preprocess(ds.train.x, False, None))


def test_idx_corrupted_magic_and_size_give_clear_errors(tmp_path: Path) -> None:
    arrays = mnist_arrays()
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, arrays, gz=False)
    images = folder / MNIST_NAMES["train_x"]
    good = images.read_bytes()

    images.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match=r"bad IDX magic number 0x12340803") as info:
        load("mnist", tmp_path)
    assert str(images) in str(info.value)

    # A label file where an image file belongs: valid IDX, wrong magic for the role.
    images.write_bytes(idx_bytes(arrays["train_y"]))
    with pytest.raises(ValueError, match=r"0x00000801, expected 0x00000803"):
        load("mnist", tmp_path)

    images.write_bytes(good[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load("mnist", tmp_path)


def test_read_idx_round_trips(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    out = read_idx(str(tmp_path / "a.gz"), expected_magic=0x00000803)
    assert out.dtype == np.uint8 and np.array_equal(out, array)


# --------------------------------------------------------------------------------------------
# CIFAR (pickles)


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Five train batches and a test batch of two images each; returns what was written."""
    written = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data, labels = cifar_rows(2, seed=i), [i % 10, (i + 3) % 10]
        write_pickle(
            root / "cifar-10-batches-py" / name,
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [b"a.png", b"b.png"],
            },
        )
        written[name] = (data, labels)
    return written


def test_cifar10_layout_channels_rows_columns(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    data1, _ = written["data_batch_1"]
    data1[0, 1] = 201  # R plane, row 0, col 1
    data1[0, 1024 + 2 * 32 + 3] = 77  # G plane, row 2, col 3
    data1[1, 2048 + 31 * 32 + 30] = 155  # image 1, B plane, row 31, col 30
    write_pickle(
        tmp_path / "cifar-10-batches-py" / "data_batch_1",
        {b"labels": written["data_batch_1"][1], b"data": data1},
    )
    check("cifar10", tmp_path)
    ds = load("cifar10", tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.train.x.shape == (10, 3, 32, 32) and ds.train.x.dtype == torch.uint8
    assert ds.test.x.shape == (2, 3, 32, 32)
    x = ds.train.x
    assert int(x[0, 0, 0, 1]) == 201 and int(x[0, 1, 2, 3]) == 77 and int(x[1, 2, 31, 30]) == 155
    # Batches are concatenated in order 1..5; spot-check pixels of a later batch by hand.
    data4, labels4 = written["data_batch_4"]
    for channel, row, col in [(0, 5, 9), (1, 31, 0), (2, 0, 31)]:
        assert int(x[6, channel, row, col]) == data4[0, channel * 1024 + row * 32 + col]
    assert ds.train.y.tolist() == [
        lab for n in range(1, 6) for lab in written[f"data_batch_{n}"][1]
    ]
    assert ds.train.y[6:8].tolist() == labels4
    assert ds.test.y.tolist() == written["test_batch"][1]


def test_cifar100_fine_labels_and_stats(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    train, test = cifar_rows(3, seed=5), cifar_rows(2, seed=6)
    train[2, 1024 + 32 + 4] = 99  # G plane, row 1, col 4 of image 2
    write_pickle(
        folder / "train",
        {b"fine_labels": [99, 0, 42], b"coarse_labels": [19, 0, 3], b"data": train},
    )
    write_pickle(folder / "test", {b"fine_labels": [7, 8], b"coarse_labels": [1, 2], b"data": test})
    ds = load("cifar100", tmp_path, augment=False)
    assert ds.num_classes == 100 and ds.input_shape == (3, 32, 32)
    assert ds.train.y.tolist() == [99, 0, 42] and ds.test.y.tolist() == [7, 8]
    assert int(ds.train.x[2, 1, 1, 4]) == 99
    out = ds.preprocess(ds.train.x, False, None)
    assert out[2, 1, 1, 4].item() == pytest.approx((99 / 255 - 0.4865) / 0.2564, rel=1e-5)


def python2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the original archives hold it: written by Python 2's cPickle (protocol 2,
    str as SHORT_BINSTRING), the array by numpy 1.x's ``numpy.core.multiarray._reconstruct``."""

    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    raw = data.tobytes()
    return b"".join([
        b"\x80\x02}(", string(b"data"),
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85", string(b"b"),
        b"\x87R(K\x01K", bytes([len(data)]), b"M\x00\x0c\x86",
        b"cnumpy\ndtype\n", string(b"u1"), b"K\x00K\x01\x87R(K\x03", string(b"|"),
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89",
        b"T", len(raw).to_bytes(4, "little"), raw, b"tb",
        string(b"labels"), b"](", *(b"K" + bytes([y]) for y in labels), b"eu.",
    ])  # fmt: skip


def test_cifar_reader_admits_the_archive_format_and_nothing_else(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    data = cifar_rows(2, seed=9)
    (folder / "data_batch_2").write_bytes(python2_cifar_pickle(data, [4, 5]))
    with open(folder / "data_batch_3", "wb") as f:  # numpy's out-of-band-capable protocol
        pickle.dump({b"data": data, b"labels": [6, 7]}, f, protocol=5)
    ds = load("cifar10", tmp_path, augment=False)
    assert torch.equal(ds.train.x[2:4].reshape(2, -1), torch.from_numpy(data))
    assert torch.equal(ds.train.x[4:6].reshape(2, -1), torch.from_numpy(data))
    assert ds.train.y[:6].tolist() == [*written["data_batch_1"][1], 4, 5, 6, 7]

    marker = tmp_path / "marker"

    class Evals:  # unpickles into eval(...): a builtin, but not one CIFAR needs
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return eval, (f"open({str(marker)!r}, 'w')",)

    class Rot13:  # bytes as protocol 2 writes them, but through another codec
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return codecs.encode, ("data", "rot13")

    for payload, refused in [(Evals(), ".eval"), (Rot13(), "encode with 'rot13'")]:
        write_pickle(folder / "data_batch_1", {b"data": payload, b"labels": [0]})
        with pytest.raises(ValueError, match="refusing to load") as info:
            load("cifar10", tmp_path)
        assert str(folder / "data_batch_1") in str(info.value)
        assert f"{refused} not allowed" in str(info.value)
    assert not marker.exists()


def test_cifar_normalisation_and_raw_mode(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    ds = load("cifar10", tmp_path)
    raw = ds.test.x
    out = ds.preprocess(raw, False, None)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out, (raw.float() / 255 - mean) / std, atol=1e-6)
    ds_raw = load("cifar10", tmp_path, normalize=False)
    assert torch.equal(ds_raw.preprocess(raw, False, None), raw.float())  # 0..255 (EventGraD)


def test_cifar_augmentation_shape_determinism_and_off_switch(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    ds = load("cifar10", tmp_path)
    x = ds.train.x

    def aug(seed: int) -> torch.Tensor:
        return ds.preprocess(x, True, torch.Generator().manual_seed(seed))

    assert aug(0).shape == x.shape and aug(0).dtype == torch.float32
    assert torch.equal(aug(0), aug(0))
    assert not torch.equal(aug(0), aug(1))
    assert not torch.equal(aug(0), ds.preprocess(x, False, None))

    plain = load("cifar10", tmp_path, augment=False)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(plain.preprocess(x, True, gen), plain.preprocess(x, False, None))

    # The dataset crops raw pixels (black padding) and then normalises.
    raw = load("cifar10", tmp_path, normalize=False)
    expected = random_crop_flip(x, torch.Generator().manual_seed(3)).float()
    assert torch.equal(raw.preprocess(x, True, torch.Generator().manual_seed(3)), expected)


def test_random_crop_flip_outputs_are_crops_of_the_padded_input() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (48, 2, 6, 5), generator=gen, dtype=torch.int64).to(torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(7), padding=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for b in range(len(x)):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(
                out[b],
                padded[b, :, top : top + 6, left : left + 5].flip(-1)
                if flip
                else padded[b, :, top : top + 6, left : left + 5],
            )
        ]
        assert len(matches) >= 1, f"sample {b} is no crop of its padded input"
        seen.update(matches)
    assert {flip for _, _, flip in seen} == {False, True}  # both flipped and plain happen
    assert len({(t, le) for t, le, _ in seen}) > 5  # and the offsets vary


# --------------------------------------------------------------------------------------------
# ImageNet (ImageFolder)


def save_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode == "L":
        img = img.convert("L")
    img.save(path)


def make_image_folder(root: Path) -> None:
    # "cat" sorts after "ant", so ant is class 0. Red PNGs for ant, JPEGs (any case) for cat.
    for split in ("train", "val"):
        save_image(root / split / "ant" / "a1.png", (255, 0, 0), (40, 30), "RGB")
        save_image(root / split / "cat" / "c1.jpg", (0, 0, 255), (30, 50), "RGB")
    save_image(root / "train" / "ant" / "a2.PNG", (255, 0, 0), (20, 20), "RGB")
    save_image(root / "train" / "cat" / "c2.JPEG", (0, 0, 255), (64, 48), "RGB")
    save_image(root / "train" / "cat" / "c3.png", (0, 0, 255), (33, 33), "L")  # grayscale
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_image_folder_classes_labels_and_transforms(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    check("imagenet", tmp_path)
    ds = load("imagenet", tmp_path, image_size=16)
    assert isinstance(ds.train, ImageFolderSplit) and isinstance(ds.test, ImageFolderSplit)
    assert ds.train.classes == ["ant", "cat"] and ds.num_classes == 2
    assert ds.input_shape == (3, 16, 16)
    names = {Path(p).name: label for p, label in ds.train.samples}
    assert names == {"a1.png": 0, "a2.PNG": 0, "c1.jpg": 1, "c2.JPEG": 1, "c3.png": 1}
    assert sorted(label for _, label in ds.test.samples) == [0, 1]
    torch.manual_seed(0)
    for split in (ds.train, ds.test):
        for i in range(len(split)):
            x, y = split[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    # A solid red image stays solid red through either transform: check RGB order and mean/std.
    red = next(i for i, (p, _) in enumerate(ds.test.samples) if p.endswith("a1.png"))
    x, y = ds.test[red]
    assert y == 0
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for channel, value in enumerate((1.0, 0.0, 0.0)):
        target = (value - mean[channel]) / std[channel]
        assert torch.allclose(x[channel], torch.full((16, 16), target), atol=1e-5)
    # preprocess is the identity for this dataset.
    assert ds.preprocess(x, True, None) is x


def test_image_folder_train_randomness_is_torch_seeded(tmp_path: Path) -> None:
    save_image(tmp_path / "train" / "a" / "x.png", (0, 0, 0), (40, 30), "RGB")
    img = Image.new("RGB", (40, 30))
    img.putdata([(i % 40 * 6, i // 40 * 8, 0) for i in range(40 * 30)])  # a gradient
    img.save(tmp_path / "train" / "a" / "x.png")
    split = ImageFolderSplit([(str(tmp_path / "train" / "a" / "x.png"), 0)], ["a"], 16, True)
    torch.manual_seed(5)
    first = split[0][0]
    torch.manual_seed(5)
    assert torch.equal(first, split[0][0])
    torch.manual_seed(6)
    assert not torch.equal(first, split[0][0])


def test_random_resized_crop_box_bounds_and_fallback() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(30, 50, generator=gen)
        assert h > 0 and w > 0 and top + h <= 30 and left + w <= 50 and top >= 0 and left >= 0
        assert 0.08 * 1500 * 0.9 <= h * w <= 1500
    # An impossible scale falls back to the centred crop with the ratio clamped to 4/3.
    assert random_resized_crop_box(100, 400, scale=(1.5, 2.0), generator=gen) == (0, 133, 100, 133)
    assert random_resized_crop_box(90, 60, scale=(1.5, 2.0), generator=gen) == (5, 0, 80, 60)
    assert random_resized_crop_box(60, 70, scale=(1.5, 2.0), generator=gen) == (0, 0, 60, 70)


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    save_image(tmp_path / "train" / "ant" / "a.png", (1, 2, 3), (8, 8), "RGB")
    save_image(tmp_path / "val" / "a.png", (1, 2, 3), (8, 8), "RGB")  # flat val, as in the tar
    with pytest.raises(DataNotFoundError, match="must already be sorted") as info:
        check("imagenet", tmp_path)
    assert str(tmp_path / "val") in str(info.value)
    save_image(tmp_path / "val" / "bee" / "b.png", (1, 2, 3), (8, 8), "RGB")
    with pytest.raises(DataNotFoundError, match=r"train/ lacks \(bee\)"):
        load("imagenet", tmp_path)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: MNIST's format in torchvision's FashionMNIST/raw/, or the system copy


@pytest.mark.parametrize(
    ("subdir", "gz"), list(itertools.product(["FashionMNIST/raw", ""], [False, True]))
)
def test_fashion_mnist_reads_idx_plain_and_gz_in_both_layouts(
    tmp_path: Path, subdir: str, gz: bool
) -> None:
    arrays = mnist_arrays()
    write_mnist(tmp_path / subdir if subdir else tmp_path, arrays, gz)
    check("fashion_mnist", tmp_path)  # no error
    ds = load("fashion_mnist", tmp_path)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28) and ds.train.x.dtype == torch.uint8
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays["train_x"]))
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(arrays["test_x"]))
    assert ds.train.y.tolist() == [3, 1, 4] and ds.test.y.tolist() == [1, 5]
    out = ds.preprocess(ds.train.x, True, None)  # Fashion-MNIST's own statistics
    assert out[0, 0, 0, 1].item() == pytest.approx((7 / 255 - 0.2860) / 0.3530, rel=1e-5)


def test_fashion_mnist_reads_the_system_copy_without_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --data-dir: the folder Debian's dataset-fashion-mnist installs (gzipped files)."""
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    write_mnist(system, mnist_arrays(), gz=True)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    check("fashion_mnist", "")
    ds = load("fashion_mnist", "")
    assert ds.train.y.tolist() == [3, 1, 4] and ds.test.x.shape == (2, 1, 28, 28)
    # A --data-dir still wins over the system copy.
    with pytest.raises(DataNotFoundError, match="FashionMNIST/raw/train-images-idx3-ubyte"):
        check("fashion_mnist", tmp_path / "elsewhere")


def test_fashion_mnist_absent_is_exit_2_naming_the_file_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    system = tmp_path / "not-installed"
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    monkeypatch.chdir(tmp_path)
    argv = ["run", "allreduce_sgd", "--no-track", "--set", "dataset=fashion_mnist"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{system}/train-images-idx3-ubyte (or {system}/train-images-idx3-ubyte.gz)" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert "suite data download fashion_mnist --data-dir DIR" in err
    assert "torchvision.datasets.FashionMNIST('DIR', download=True)" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Missing data

MISSING = {
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", "torchvision.datasets.MNIST('"),
    "cifar10": ("cifar-10-batches-py/data_batch_1", "torchvision.datasets.CIFAR10('"),
    "cifar100": ("cifar-100-python/train", "torchvision.datasets.CIFAR100('"),
    "imagenet": ("train", "image-net.org"),
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_files_raise_with_paths_and_instructions(tmp_path: Path, name: str) -> None:
    data_dir = tmp_path / "nowhere"
    path, how = MISSING[name]
    for attempt in (lambda: check(name, data_dir), lambda: load(name, data_dir)):
        with pytest.raises(DataNotFoundError) as info:
            attempt()
        message = str(info.value)
        assert repr(name) in message
        assert str(data_dir / path) in message
        assert "--data-dir" in message and f"suite data download {name}" in message
        assert how in message


def test_partly_missing_cifar10_names_only_the_missing_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError) as info:
        check("cifar10", tmp_path)
    message = str(info.value)
    assert "data_batch_3" in message and "data_batch_1" not in message


@pytest.mark.parametrize("name", sorted(MISSING))
def test_empty_data_dir_says_data_dir_is_required(name: str) -> None:
    for attempt in (lambda: check(name, ""), lambda: load(name, "")):
        with pytest.raises(DataNotFoundError, match="--data-dir is required"):
            attempt()


def test_in_memory_datasets_need_no_check() -> None:
    assert DATASETS.get("digits").meta["check"] is None
    assert DATASETS.get("synthetic").meta["check"] is None


# --------------------------------------------------------------------------------------------
# digits and synthetic


def test_digits_fixed_stratified_split_and_standardised() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    a = load("digits")
    torch.manual_seed(456)
    np.random.seed(456)
    b = load("digits")
    assert a.num_classes == 10 and a.input_shape == (1, 8, 8)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 360
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.dtype == torch.float32 and a.train.x.shape[1:] == (1, 8, 8)
    assert a.train.x.min() >= 0.0 and a.train.x.max() <= 1.0 and a.train.x.max() > 0.9
    counts = torch.bincount(a.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~180 per class * 0.2
    x = a.preprocess(a.train.x, True, None)
    assert abs(x.mean().item()) < 1e-4 and x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(x, a.preprocess(a.train.x, False, None))
    c = load("digits", test_fraction=0.3)
    assert len(c.test) == 540 and len(c.train) + len(c.test) == 1797


def test_digits_file_read_equals_sklearn_load_digits() -> None:
    from sklearn.datasets import load_digits

    from suite.tasks.datasets import _digits_arrays

    images, labels = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)


def test_synthetic_shapes_determinism_and_learnability() -> None:
    ds = load("synthetic", input_shape=(2, 3, 4), num_classes=3, train_size=30, test_size=12)
    assert ds.input_shape == (2, 3, 4) and ds.num_classes == 3
    assert ds.train.x.shape == (30, 2, 3, 4) and ds.test.x.shape == (12, 2, 3, 4)
    assert torch.bincount(ds.train.y).tolist() == [10, 10, 10]
    again = load("synthetic", input_shape=(2, 3, 4), num_classes=3, train_size=30, test_size=12)
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.y, again.test.y)
    other = load(
        "synthetic", input_shape=(2, 3, 4), num_classes=3, train_size=30, test_size=12, data_seed=1
    )
    assert not torch.equal(ds.train.x, other.train.x)
    assert ds.preprocess(ds.train.x, True, None).dtype == torch.float32

    # Default knobs: nearest class mean (estimated on train) separates the test set.
    ds = load("synthetic")
    assert ds.train.x.shape == (4096, 64) and len(ds.test) == 1024
    means = torch.stack([ds.train.x[ds.train.y == k].mean(0) for k in range(10)])
    predicted = torch.cdist(ds.test.x, means).argmin(1)
    assert (predicted == ds.test.y).float().mean() > 0.95


# --------------------------------------------------------------------------------------------
# Downloads


def test_download_without_torchvision_gives_manual_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    for name, url in (
        ("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("fashion_mnist", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        ("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ):
        with pytest.raises(RuntimeError) as info:
            download_dataset(name, str(tmp_path))
        assert isinstance(info.value, DownloadError | DataNotFoundError)
        message = str(info.value)
        assert "torchvision is not importable" in message
        assert url in message and str(tmp_path) in message
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_download_imagenet_digits_and_empty_dir(tmp_path: Path, capsys) -> None:
    with pytest.raises(DownloadError, match=r"image-net\.org"):
        download_dataset("imagenet", str(tmp_path))
    with pytest.raises(DownloadError, match="--data-dir"):
        download_dataset("cifar10", "")
    download_dataset("digits", "")
    download_dataset("synthetic", "")
    assert capsys.readouterr().out.count("nothing needs downloading") == 2
