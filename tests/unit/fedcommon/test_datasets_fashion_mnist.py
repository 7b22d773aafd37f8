"""Fashion-MNIST: the IDX reader, where the loader looks, its error when the files are missing,
and the installed data set itself (``make install`` fetches it; these tests need it there)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedcommon import datasets
from fedcommon.messages.v1 import Partitioning
from fedcommon.settings import DataSettings


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_fashion_mnist(folder: Path, *, train: int, test: int) -> None:
    rng = np.random.default_rng(0)
    for key, file in datasets.FASHION_MNIST_FILES.items():
        count = train if key.endswith("train") else test
        if key.startswith("x"):
            images = rng.integers(0, 256, (count, 28, 28))
            images[0, 0, 0], images[0, 0, 1] = 0, 255
            _write_idx(folder / file, images)
        else:
            _write_idx(folder / file, np.arange(count) % 10)


def test_read_idx_returns_the_shape_and_bytes_the_header_announces(tmp_path: Path) -> None:
    expected = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", expected)

    array = datasets.read_idx(tmp_path / "a.gz")

    np.testing.assert_array_equal(array, expected)


def test_read_idx_refuses_a_truncated_file_or_another_element_type(tmp_path: Path) -> None:
    _write_idx(tmp_path / "short.gz", np.zeros((2, 3), np.uint8))
    raw = gzip.decompress((tmp_path / "short.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-1]))
    (tmp_path / "floats.gz").write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1, 0, 0, 0, 0])))

    with pytest.raises(ValueError, match="5 bytes of data for shape"):
        datasets.read_idx(tmp_path / "short.gz")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        datasets.read_idx(tmp_path / "floats.gz")


def test_load_fashion_mnist_scales_to_unit_interval_and_keeps_splits(tmp_path: Path) -> None:
    _fake_fashion_mnist(tmp_path, train=12, test=5)

    data = datasets.load_fashion_mnist(tmp_path)

    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert (data.x_train[0, 0, 0, 0], data.x_train[0, 0, 0, 1]) == (0.0, 1.0)
    np.testing.assert_array_equal(data.y_test, [0, 1, 2, 3, 4])
    assert (data.input_shape, data.num_classes) == ((1, 28, 28), 10)


def test_a_configured_folder_is_the_only_one_else_the_venv_then_debian() -> None:
    prefix = Path("/opt/venv")

    assert datasets.fashion_mnist_dirs(Path("/data/fm"), prefix=prefix) == [Path("/data/fm")]
    assert datasets.fashion_mnist_dirs(None, prefix=prefix) == [
        Path("/opt/venv/share/fashion-mnist"),
        Path("/usr/share/datasets/fashion-mnist"),
    ]
    assert DataSettings(FEDENGINE_FASHION_MNIST_DIR="/data/fm").fashion_mnist_dir == Path(
        "/data/fm"
    )


def test_missing_files_raise_an_error_that_says_where_it_looked_and_how_to_install(
    tmp_path: Path,
) -> None:
    # Prepare: one folder does not exist, the other lacks one of the four files.
    (tmp_path / "partial").mkdir()
    _fake_fashion_mnist(tmp_path / "partial", train=2, test=2)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    folders = [tmp_path / "absent", tmp_path / "partial"]

    with pytest.raises(datasets.DatasetNotInstalled) as raised:
        datasets.find_fashion_mnist(folders)

    message = str(raised.value)
    assert str(tmp_path / "absent") in message and str(tmp_path / "partial") in message
    assert "make install" in message and "dataset-fashion-mnist" in message
    assert "FEDENGINE_FASHION_MNIST_DIR" in message


def test_the_installed_data_set_is_the_official_one_and_loaded_once() -> None:
    data = datasets.load_dataset("fashion_mnist")

    assert data.x_train.shape == (60_000, 1, 28, 28) and data.x_test.shape == (10_000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_test.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert 0.0 <= data.x_test.min() <= data.x_test.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(data.y_train), np.full(10, 6_000))
    np.testing.assert_array_equal(np.bincount(data.y_test), np.full(10, 1_000))
    assert datasets.load_dataset("fashion_mnist") is data


@pytest.mark.parametrize("scheme", list(Partitioning))
def test_partitions_of_the_training_set_cover_it_exactly_once(scheme: Partitioning) -> None:
    labels = datasets.load_dataset("fashion_mnist").y_train

    parts = datasets.partition(labels, num_clients=100, scheme=scheme, alpha=0.3, seed=1)

    assert len(parts) == 100 and min(len(p) for p in parts) >= 2
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(60_000))
