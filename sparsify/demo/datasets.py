"""Small image-classification datasets for the examples, the CLI and the tests — offline first.

`load_dataset` returns a `DatasetSplits` of float tensors ``[N, 1, H, W]`` scaled to
``[0, 1]`` with ``int64`` labels; `DatasetSplits.loaders` wraps them in DataLoaders.

* ``"digits"`` (the default) — scikit-learn's 8×8 handwritten digits (1 797 images, 10 classes). The
  data ships inside scikit-learn, so it never touches the network. Split 80/20 with a fixed seed.
* ``"mnist"`` / ``"fashion-mnist"`` — 28×28, 60 000 + 10 000 images. Sources are tried in order, and
  if none works the error lists every one with the reason it failed:

  1. IDX files already under ``root`` in torchvision's layout (``<root>/MNIST/raw/…``,
     ``<root>/FashionMNIST/raw/…``), plain or ``.gz``;
  2. for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` package (``apt install
     dataset-fashion-mnist``), found with ``dpkg -L``;
  3. a torchvision download into ``root``, only when ``download=True``.

``root`` defaults to ``$SPARSIFY_DATA`` or ``~/.cache/sparsify/data``. IDX files are parsed here
(`read_idx`), so only the download needs torchvision.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .._checks import check_flags

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSplits",
    "default_root",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "read_idx",
]

DATASETS = ("digits", "mnist", "fashion-mnist")

# torchvision's folder name, the Debian package holding the files (if any), and the class names.
_IDX_SETS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "mnist": ("MNIST", None, tuple(str(i) for i in range(10))),
    "fashion-mnist": (
        "FashionMNIST",
        "dataset-fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (the third byte of the magic number) → big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(FileNotFoundError):
    """No source could provide the dataset; the message lists every source tried and why it failed."""


@attrs.define
class DatasetSplits:
    """A train/test split of images ``[N, 1, H, W]`` (float32 in ``[0, 1]``) and labels ``[N]`` (int64)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str  # where the data came from, for printing

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def subset(self, train: int | None = None, test: int | None = None) -> DatasetSplits:
        """The first ``train`` / ``test`` examples of each split (``None`` keeps a split whole)."""
        return attrs.evolve(
            self,
            train_x=self.train_x[:train], train_y=self.train_y[:train],
            test_x=self.test_x[:test], test_y=self.test_y[:test],
        )

    def loaders(self, batch_size: int = 64, *, seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """``(train, test)`` DataLoaders; the train loader shuffles with a generator seeded by ``seed``,
        the test loader keeps the order in batches of at least 256."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid: allowed an integer >= 1")
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(TensorDataset(self.train_x, self.train_y), batch_size, shuffle=True, generator=generator)
        test = DataLoader(TensorDataset(self.test_x, self.test_y), batch_size=max(batch_size, 256))
        return train, test

    def __repr__(self) -> str:
        return (
            f"DatasetSplits({self.name!r}: train {tuple(self.train_x.shape)}, test {tuple(self.test_x.shape)}, "
            f"{self.num_classes} classes, from {self.source})"
        )


def default_root() -> Path:
    """``$SPARSIFY_DATA`` if set, else ``~/.cache/sparsify/data``."""
    return Path(os.environ.get("SPARSIFY_DATA") or Path.home() / ".cache" / "sparsify" / "data").expanduser()


def load_dataset(name: str = "digits", *, root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load ``name`` (one of `DATASETS`) as tensors; see the module docstring for the sources.

    Raises:
        ValueError: ``name`` is not one of `DATASETS`.
        DatasetNotFoundError: no source could provide the data (the message lists what was tried).
    """
    check_flags("load_dataset", download=download)
    if name == "digits":
        return load_digits()
    if name not in _IDX_SETS:
        raise ValueError(f"dataset={name!r} is unknown: allowed values are {', '.join(map(repr, DATASETS))}")
    root = default_root() if root is None else Path(root).expanduser()
    folder, package, classes = _IDX_SETS[name]
    attempts: list[tuple[str, Callable[[], Path]]] = [(f"{root / folder / 'raw'}", lambda: root / folder / "raw")]
    if package is not None:
        attempts.append((f"Debian package {package}", lambda: _debian_dir(package)))
    if download:
        attempts.append((f"torchvision download into {root}", lambda: _torchvision_download(folder, root)))
    failures = []
    for label, locate in attempts:
        try:
            directory = locate()
            return load_idx_dataset(directory, name=name, classes=classes, source=label)
        except (OSError, ValueError, RuntimeError, ImportError) as error:
            failures.append(f"  - {label}: {error}")
    if not download:
        failures.append("  - download: not attempted (pass download=True, or --download on the command line)")
    raise DatasetNotFoundError(
        f"cannot load dataset {name!r}; tried:\n" + "\n".join(failures)
        + "\nThe 'digits' dataset needs no files and works offline."
    )


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """scikit-learn's 8×8 digits, pixel values 0–16 scaled to ``[0, 1]``, split with a fixed seed."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is invalid: allowed 0 < test_fraction < 1")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is in the 'data' extra
        raise ImportError(
            "the 'digits' dataset needs scikit-learn, which is not installed: pip install 'sparsify-coreml[data]' "
            "(or pip install scikit-learn); or use MNIST: --dataset mnist --download, with "
            "pip install 'sparsify-coreml[vision]'"
        ) from error
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return DatasetSplits(
        "digits", images[train], labels[train], images[test], labels[test],
        classes=tuple(str(i) for i in range(10)), source="scikit-learn (bundled)",
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format), plain or gzip-compressed, into a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
    ``uint32`` sizes and the data in row-major order.
    """
    path = Path(path)
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes, got {data[:4]!r}")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: IDX type code 0x{type_code:02x} is unknown: allowed "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dims)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} of {dtype.name} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_dataset(
    directory: str | Path, *, name: str = "idx", classes: tuple[str, ...] | None = None, source: str | None = None
) -> DatasetSplits:
    """Load MNIST-style ``train-…``/``t10k-…`` IDX image and label files from ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such directory {directory}")
    arrays = {}
    for split, stems in _IDX_FILES.items():
        for kind, stem in zip(("images", "labels"), stems):
            path = _find_idx(directory, stem)
            arrays[split, kind] = read_idx(path)
    tensors = []
    for split in _IDX_FILES:
        images, labels = arrays[split, "images"], arrays[split, "labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{directory}: {split} images must be [N, H, W] and labels [N], got {images.shape} and {labels.shape}"
            )
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        tensors.append(torch.from_numpy(images.astype(np.float32) / scale).unsqueeze(1))
        tensors.append(torch.from_numpy(labels.astype(np.int64)))
    if classes is None:
        classes = tuple(str(i) for i in range(int(max(tensors[1].max(), tensors[3].max())) + 1))
    train_x, train_y, test_x, test_y = tensors
    return DatasetSplits(name, train_x, train_y, test_x, test_y, classes=classes, source=source or str(directory))


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {stem} or {stem}.gz in {directory}")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _debian_dir(package: str) -> Path:
    """The folder holding the IDX files of an installed Debian package (from ``dpkg -L``)."""
    if shutil.which("dpkg") is None:
        raise FileNotFoundError("dpkg is not available (not a Debian-based system)")
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FileNotFoundError(f"not installed (apt install {package})")
    for line in result.stdout.splitlines():
        if Path(line).name.startswith(_IDX_FILES["train"][0]):
            return Path(line).parent
    raise FileNotFoundError(f"package {package} lists no {_IDX_FILES['train'][0]} file")


def _torchvision_download(folder: str, root: Path) -> Path:
    try:
        import torchvision.datasets as tv
    except ImportError as error:
        raise ImportError("torchvision is not installed: pip install 'sparsify-coreml[vision]'") from error
    dataset_class = getattr(tv, folder)
    for train in (True, False):
        dataset_class(str(root), train=train, download=True)
    return root / folder / "raw"
