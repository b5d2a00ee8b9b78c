"""Datasets (scikit-learn digits offline, IDX parsing, the MNIST source chain) and the example models. No downloads."""

from __future__ import annotations

import gzip
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsify.demo import datasets
from sparsify.demo.datasets import DatasetNotFoundError, load_dataset, load_digits, load_idx_dataset, read_idx
from sparsify.demo.models import MLP, SmallCNN, train_epoch

# -- IDX files written here --------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` in the IDX format (big-endian), gzip-compressed when ``compress``."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[big.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + big.tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist_dir(directory: Path, *, n_train: int = 12, n_test: int = 5, compress: bool = False) -> Path:
    """A tiny MNIST-style folder: 28×28 uint8 images and labels 0-9, as torchvision lays it out."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return directory


# -- digits ---------------------------------------------------------------------------------------


def test_digits_shapes_ranges_and_split() -> None:
    data = load_dataset()  # the default, offline
    assert data.name == "digits"
    assert data.train_x.shape == (1438, 1, 8, 8) and data.test_x.shape == (359, 1, 8, 8)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10
    for x in (data.train_x, data.test_x):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(data.train_y.tolist()) == set(range(10)) == set(data.test_y.tolist())
    again = load_digits()
    assert torch.equal(again.test_y, data.test_y), "the split is seeded: the same every time"
    other = load_digits(seed=1)
    assert not torch.equal(other.test_y, data.test_y)


def test_digits_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match=r"test_fraction=1\.5 is invalid: allowed 0 < test_fraction < 1"):
        load_digits(test_fraction=1.5)


def test_loaders_and_subset() -> None:
    data = load_digits().subset(train=50, test=20)
    assert len(data.train_x) == 50 and len(data.test_y) == 20
    train, test = data.loaders(batch_size=16, seed=3)
    images, labels = next(iter(train))
    assert images.shape == (16, 1, 8, 8) and labels.shape == (16,)
    assert sum(len(y) for _, y in test) == 20
    first = [y.tolist() for _, y in data.loaders(16, seed=3)[0]]
    assert first == [y.tolist() for _, y in data.loaders(16, seed=3)[0]], "shuffling is seeded"
    with pytest.raises(ValueError, match="batch_size=0 is invalid"):
        data.loaders(batch_size=0)
    assert "digits" in repr(data) and "(50, 1, 8, 8)" in repr(data)


def test_unknown_dataset_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"dataset='cifar' is unknown: allowed values are 'digits', 'mnist'"):
        load_dataset("cifar")


# -- IDX parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_round_trips(tmp_path: Path, dtype: str, compress: bool) -> None:
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4)
    if np.dtype(dtype) == np.uint8:
        array = array + 5
    array = array.astype(dtype)
    got = read_idx(write_idx(tmp_path / "x.idx", array, compress=compress))
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)
    assert got.dtype.isnative and got.flags.writeable


def test_read_idx_rejects_broken_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file: it must start with two zero bytes"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="IDX type code 0x07 is unknown"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2, 2) + b"\x00" * 3)
    with pytest.raises(ValueError, match=r"shape \(2, 2\) of uint8 \(4 bytes\) but the file holds 3 bytes"):
        read_idx(bad)


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_dataset_scales_and_shapes(tmp_path: Path, compress: bool) -> None:
    folder = write_mnist_dir(tmp_path / "raw", compress=compress)
    data = load_idx_dataset(folder, name="tiny")
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (5, 1, 28, 28)
    assert data.train_x.dtype == torch.float32
    assert float(data.train_x[0, 0, 0, 0]) == 0.0 and float(data.train_x[0, 0, 0, 1]) == 1.0
    assert data.train_y.tolist() == [i % 10 for i in range(12)]
    assert data.classes == tuple(str(i) for i in range(10))


def test_load_idx_dataset_names_missing_file(tmp_path: Path) -> None:
    folder = write_mnist_dir(tmp_path / "raw")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz in"):
        load_idx_dataset(folder)


def test_load_idx_dataset_rejects_mismatched_lengths(tmp_path: Path) -> None:
    folder = write_mnist_dir(tmp_path / "raw")
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"train images must be \[N, H, W\] and labels \[N\]"):
        load_idx_dataset(folder)


# -- MNIST / Fashion-MNIST source chain -----------------------------------------------------------


def test_mnist_from_the_torchvision_layout(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "MNIST" / "raw", compress=True)
    data = load_dataset("mnist", root=tmp_path)
    assert data.name == "mnist" and data.image_shape == (1, 28, 28)
    assert data.source == str(tmp_path / "MNIST" / "raw")


def test_root_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_dir(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setenv("SPARSIFY_DATA", str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert data.classes[0] == "T-shirt/top" and len(data.train_x) == 12


def test_missing_data_lists_every_source_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(package: str) -> Path:
        raise FileNotFoundError(f"not installed (apt install {package})")

    monkeypatch.setattr(datasets, "_debian_dir", not_installed)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'FashionMNIST' / 'raw'}: no such directory" in message
    assert "Debian package dataset-fashion-mnist: not installed (apt install dataset-fashion-mnist)" in message
    assert "download: not attempted (pass download=True" in message
    assert "'digits' dataset needs no files" in message
    with pytest.raises(DatasetNotFoundError, match="download: not attempted"):
        load_dataset("mnist", root=tmp_path)  # no Debian package for MNIST: only the folder is tried


def test_debian_package_is_found_with_dpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``dpkg`` on PATH lists the package's files, the way ``dpkg -L`` does."""
    share = write_mnist_dir(tmp_path / "usr" / "share" / "datasets" / "fashion-mnist", compress=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dpkg = bin_dir / "dpkg"
    listing = "\n".join(["/.", str(share.parent), str(share), *(str(p) for p in sorted(share.iterdir()))])
    dpkg.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-L" ] && [ "$2" = "dataset-fashion-mnist" ]; then\n'
        f"cat <<'EOF'\n{listing}\nEOF\nexit 0\nfi\n"
        "echo \"dpkg-query: package '$2' is not installed\" >&2; exit 1\n"
    )
    dpkg.chmod(dpkg.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    data = load_dataset("fashion-mnist", root=tmp_path / "empty")
    assert data.source == "Debian package dataset-fashion-mnist"
    assert data.train_x.shape == (12, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match=r"not installed \(apt install other\)"):
        datasets._debian_dir("other")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", root="/nonexistent")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10 and float(data.train_x.max()) == 1.0


# -- the example models ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 5, 6)])
def test_example_models_fit_the_image_size(shape: tuple[int, int, int]) -> None:
    images = torch.rand(4, *shape)
    for model in (SmallCNN(shape, num_classes=7), MLP(shape, num_classes=7, hidden=(16,))):
        assert model(images).shape == (4, 7)


def test_example_models_reject_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"image_shape=\(1, 3, 8\) is invalid: height and width must be >= 4"):
        SmallCNN((1, 3, 8))
    with pytest.raises(ValueError, match=r"image_shape=\(8, 8\) is invalid: allowed \(channels, height, width\)"):
        SmallCNN((8, 8))
    with pytest.raises(ValueError, match="hidden=0 is invalid: allowed an integer >= 1"):
        MLP(hidden=(0,))


def test_train_epoch_learns_and_calls_after_step() -> None:
    data = load_digits().subset(train=128, test=64)
    train, _ = data.loaders(batch_size=32)
    model = MLP(data.image_shape, hidden=(32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    calls = []
    first = train_epoch(model, train, optimizer, after_step=lambda: calls.append(1))
    for _ in range(5):
        last = train_epoch(model, train, optimizer)
    assert len(calls) == 4, "once per batch"
    assert last < first
