"""Data sets that ship inside packages (no download at run time) and their federated partitions.

``digits`` is scikit-learn's copy of UCI optdigits: 1,797 8x8 images, 10 classes. The held-out
test split is fixed (stratified, seed 0) so the coordinator evaluates on data no device holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from fedcommon.messages.v1 import Partitioning

TEST_FRACTION = 0.2
SPLIT_SEED = 0


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
    """Load a packaged data set with its fixed train/test split."""
    if name != "digits":
        raise ValueError(f"dataset: unknown data set {name!r} (known: digits)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    x = (features.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Dataset(name, x_train, y_train, x_test, y_test, (1, 8, 8), 10)


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
    Draws repeat (bounded) until every client holds at least ``min_size`` samples.
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
    classes = np.unique(labels)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                shards[client].extend(chunk.tolist())
        if min(len(shard) for shard in shards) >= min_size:
            return [np.sort(np.asarray(shard, dtype=np.int64)) for shard in shards]
    raise ValueError(f"partition: alpha={alpha} leaves some client under {min_size} samples")
