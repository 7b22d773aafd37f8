"""Data sets that need no download at run time, and their federated partitions.

``digits`` is scikit-learn's copy of UCI optdigits: 1,797 8x8 images, 10 classes. The held-out
test split is fixed (stratified, seed 0) so the coordinator evaluates on data no device holds.

``fashion_mnist`` is Zalando's Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747): 28x28 grey
images of clothing, 10 classes, 60,000 training and 10,000 test images. Devices partition the
training set; the coordinator evaluates on the official test set. The files come from the
Debian package ``dataset-fashion-mnist`` (MIT licence), which ``make install`` fetches into the
virtual environment; the loader reads its four IDX ``.gz`` files with numpy alone, so the same
code reads any MNIST-format copy that FEDENGINE_FASHION_MNIST_DIR names.
"""

from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import get_args

import numpy as np
import numpy.typing as npt

from fedcommon.errors import FedError
from fedcommon.messages.v1 import DatasetName, Partitioning
from fedcommon.settings import DataSettings

TEST_FRACTION = 0.2
SPLIT_SEED = 0

# Where Debian's package installs the files (``apt-get install dataset-fashion-mnist``).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Where ``make install`` extracts that package, relative to the virtual environment.
VENV_FASHION_MNIST_DIR = Path("share") / "fashion-mnist"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_IDX_UNSIGNED_BYTE = 0x08


class DatasetNotInstalled(FedError):
    """A data set's files are not where the loader looks; the message says how to get them."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    input_shape: tuple[int, ...]
    num_classes: int


@cache
def load_dataset(name: str) -> Dataset:
    """Load a data set with its fixed train/test split, once per process.

    Raises
    ------
    ValueError
        ``name`` is not a known data set.
    DatasetNotInstalled
        The data set's files are missing (not cached: a later call finds them once installed).
    """
    if name == "digits":
        return _load_digits()
    if name == "fashion_mnist":
        return load_fashion_mnist(find_fashion_mnist(_fashion_mnist_dirs()))
    known = ", ".join(get_args(DatasetName))
    raise ValueError(f"dataset: unknown data set {name!r} (known: {known})")


def check_installed(name: str) -> None:
    """Raise ``DatasetNotInstalled`` (saying how to install it) unless ``name``'s files are
    there, without loading them: for a command that starts services to check before it does."""
    if name == "fashion_mnist":
        find_fashion_mnist(_fashion_mnist_dirs())


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    x = (features.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, (1, 8, 8), 10)


def standardized(dataset: Dataset) -> Dataset:
    """Return ``dataset`` with every feature standardised by its training-split statistics.

    Each feature (pixel) has the training split's mean subtracted and is divided by the
    training split's standard deviation (1 where that is 0: a pixel constant in training is
    only centred); the test split is transformed with the same statistics, so nothing about
    it leaks into training. Features stay float32 and keep their shape; ``dataset`` is not
    changed.
    """
    features = dataset.x_train.reshape(len(dataset.x_train), -1).astype(np.float64)
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std[std == 0] = 1.0

    def transform(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        flat: npt.NDArray[np.float64] = (x.reshape(len(x), -1).astype(np.float64) - mean) / std
        return flat.reshape(x.shape).astype(np.float32)

    return replace(dataset, x_train=transform(dataset.x_train), x_test=transform(dataset.x_test))


@cache
def load_prepared(name: str, *, standardize: bool = False) -> Dataset:
    """The data set as a task uses it: as loaded, or standardized (computed once per process,
    as ``load_dataset`` loads once)."""
    dataset = load_dataset(name)
    return standardized(dataset) if standardize else dataset


def fashion_mnist_dirs(configured: Path | None, *, prefix: Path) -> list[Path]:
    """Return the folders to look for Fashion-MNIST in, in order.

    A configured folder (FEDENGINE_FASHION_MNIST_DIR) is the only one; otherwise the virtual
    environment's copy (``prefix`` is ``sys.prefix``), then Debian's.
    """
    if configured is not None:
        return [configured]
    return [prefix / VENV_FASHION_MNIST_DIR, DEBIAN_FASHION_MNIST_DIR]


def _fashion_mnist_dirs() -> list[Path]:
    return fashion_mnist_dirs(DataSettings().fashion_mnist_dir, prefix=Path(sys.prefix))


def find_fashion_mnist(folders: list[Path]) -> Path:
    """Return the first of ``folders`` that holds all four Fashion-MNIST files.

    Raises
    ------
    DatasetNotInstalled
        None does; the message names the folders and the ways to install the files.
    """
    for folder in folders:
        if all((folder / file).is_file() for file in FASHION_MNIST_FILES.values()):
            return folder
    looked = ", ".join(str(folder) for folder in folders)
    raise DatasetNotInstalled(
        f"Fashion-MNIST is not installed: no folder of {looked} holds "
        f"{', '.join(FASHION_MNIST_FILES.values())}. Run `make install` (it fetches the Debian "
        "package dataset-fashion-mnist into .venv/share/fashion-mnist), or `apt-get install "
        "dataset-fashion-mnist` as root, or set FEDENGINE_FASHION_MNIST_DIR to a folder "
        "holding those four files."
    )


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """Read a gzipped IDX file of unsigned bytes (the MNIST format) into an array of its shape.

    The header is two zero bytes, the element type (0x08: unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32 (http://yann.lecun.com/exdb/mnist/).
    """
    raw = gzip.decompress(path.read_bytes())
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != _IDX_UNSIGNED_BYTE:
        raise ValueError(f"read_idx: {path} is not an IDX file of unsigned bytes")
    dimensions = raw[3]
    header = 4 + 4 * dimensions
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=dimensions, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(
            f"read_idx: {path} holds {len(raw) - header} bytes of data for shape {shape}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(folder: Path) -> Dataset:
    """Load Fashion-MNIST from ``folder``: features in [0, 1] shaped (n, 1, 28, 28), labels 0-9.

    The training split is the official 60,000 images (what devices partition), the test split
    the official 10,000 (what the coordinator evaluates on).
    """
    arrays = {key: read_idx(folder / file) for key, file in FASHION_MNIST_FILES.items()}

    def features(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return (images.reshape(-1, 1, 28, 28) / np.float32(255.0)).astype(np.float32)

    x_train, x_test = features(arrays["x_train"]), features(arrays["x_test"])
    y_train = arrays["y_train"].astype(np.int64)
    y_test = arrays["y_test"].astype(np.int64)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"load_fashion_mnist: images and labels in {folder} differ in number")
    return Dataset("fashion_mnist", x_train, y_train, x_test, y_test, (1, 28, 28), 10)


# Free Dirichlet draws tried before the partition gives every client its floor first.
DIRICHLET_TRIES = 10


def partition(
    labels: npt.NDArray[np.int64],
    *,
    num_clients: int,
    scheme: Partitioning,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 2,
) -> list[npt.NDArray[np.int64]]:
    """Split sample indices among clients: IID shards or Dirichlet(alpha) label skew.

    Dirichlet partitioning follows Hsu et al. 2019 (arXiv:1909.06335): per class, the samples are
    divided among clients in proportions drawn from Dir(alpha); small alpha means strong skew.
    Up to DIRICHLET_TRIES draws are tried until every client holds at least ``min_size``
    samples; after that each client gets ``min_size`` random samples first and the rest are
    drawn so. Either way the partition exists whenever ``num_clients * min_size`` samples do
    (checked first, raising ValueError at once).
    """
    if num_clients < 1:
        raise ValueError("partition: num_clients must be >= 1")
    if num_clients * min_size > len(labels):
        raise ValueError(
            f"partition: {len(labels)} samples cannot give {num_clients} clients {min_size} each"
        )
    rng = np.random.default_rng(seed)
    if scheme == Partitioning.IID:
        order = rng.permutation(len(labels))
        return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]
    if alpha <= 0:
        raise ValueError("partition: alpha must be > 0")
    for _ in range(DIRICHLET_TRIES):
        shards = _dirichlet(labels, np.arange(len(labels)), num_clients, alpha, rng)
        if min(len(shard) for shard in shards) >= min_size:
            return [np.sort(shard) for shard in shards]
    # Many clients with few samples each (10,000 devices on Fashion-MNIST: 6 a client) almost
    # never all get min_size from a free draw: give each min_size samples at random first,
    # then the rest by the Dirichlet draw, so that the partition always exists (the label skew
    # is that much weaker). The same seed gives the same partition.
    order = rng.permutation(len(labels))
    floor = order[: num_clients * min_size].reshape(num_clients, min_size)
    rest = _dirichlet(labels, order[num_clients * min_size :], num_clients, alpha, rng)
    return [np.sort(np.concatenate([floor[c], rest[c]])) for c in range(num_clients)]


def _dirichlet(
    labels: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int64],
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[npt.NDArray[np.int64]]:
    """Divide ``indices`` among clients class by class in Dir(alpha) proportions (each class's
    members shuffled, then cut at the cumulative proportions), grouped without a Python loop
    over clients: 10,000 clients is 10,000 cuts a class."""
    owners = np.empty(len(indices), np.int64)
    positions = np.arange(len(indices))
    for label in np.unique(labels):
        mine = positions[labels[indices] == label]
        members = rng.permutation(mine)
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        # The k-th member goes to the client whose cut range holds k (np.split's rule).
        owners[members] = np.searchsorted(cuts, np.arange(len(members)), side="right")
    order = np.argsort(owners, kind="stable")
    bounds = np.searchsorted(owners[order], np.arange(num_clients + 1))
    grouped = indices[order]
    return [grouped[bounds[c] : bounds[c + 1]].astype(np.int64) for c in range(num_clients)]


def check_partition(name: str, devices: int, *, min_size: int = 2) -> None:
    """Raise ValueError, saying why, when data set ``name`` cannot give ``devices`` devices
    ``min_size`` training examples each: for a command to refuse at once, before it starts a
    fleet that could never partition its data (1,000 devices on digits' 1,437 examples)."""
    have = len(load_dataset(name).y_train)
    if devices * min_size > have:
        raise ValueError(
            f"{name} has {have} training examples: {devices} devices cannot hold {min_size} "
            f"each (at most {have // min_size} devices; use --dataset fashion_mnist for more)"
        )
