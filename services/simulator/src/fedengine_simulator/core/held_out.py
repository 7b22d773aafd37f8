"""Each simulated device's held-out data, for federated evaluation: pure, no I/O.

The fleet's partition (fedcommon.datasets.partition) splits only the built-in data set's
training split, and what a device trains on must not change for existing tasks, so a device's
held-out data is not carved out of its partition. It is a share of the data set's *test*
split instead, mirroring the training partition class by class: of each class's test
examples, a device gets the share it holds of that class's training examples (IID: about an
equal share of every class; Dirichlet label skew: the same skew in its test data as in its
training data, as a real device's own held-out data would have).

The shares are a partition of the test split (every test example goes to exactly one device),
so the example-weighted mean over the whole fleet is the central evaluation on that split
(the coordinator's). A device may get no test example at all (a small share of a fleet larger
than the test split); it then has nothing to evaluate on and answers nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Indices = npt.NDArray[np.int64]
# Keeps this draw apart from the other uses of the fleet seed (partitions, attackers).
_HELD_OUT_STREAM = 0x4E1D0057


def held_out_rng(fleet_seed: int) -> np.random.Generator:
    """The generator ``held_out_shares`` takes: the same fleet seed, the same shares."""
    return np.random.default_rng([_HELD_OUT_STREAM, fleet_seed])


def held_out_shares(
    train_labels: npt.NDArray[np.int64],
    train_shares: Sequence[Indices],
    test_labels: npt.NDArray[np.int64],
    *,
    rng: np.random.Generator,
) -> list[Indices]:
    """Split the test split's indices among the devices as ``train_shares`` splits the
    training split, class by class.

    Parameters
    ----------
    train_labels
        The training split's labels (what ``train_shares`` index).
    train_shares
        Each device's training indices (fedcommon.datasets.partition), in device order.
    test_labels
        The test split's labels.
    rng
        Orders each class's test examples before they are cut (a seeded generator makes the
        shares repeat from run to run).

    Returns
    -------
    list of int64 arrays
        Each device's test indices, sorted; together exactly the test split's indices.

    Raises
    ------
    ValueError
        ``train_shares`` is empty, or a label is negative.
    """
    if not train_shares:
        raise ValueError("held_out_shares: train_shares must name at least one device")
    if (train_labels.size and train_labels.min() < 0) or (
        test_labels.size and test_labels.min() < 0
    ):
        raise ValueError("held_out_shares: labels must be >= 0")
    num_classes = int(max(train_labels.max(initial=-1), test_labels.max(initial=-1))) + 1
    held = np.stack(
        [np.bincount(train_labels[share], minlength=num_classes) for share in train_shares]
    ).astype(np.int64)
    shares: list[list[int]] = [[] for _ in train_shares]
    for label in np.unique(test_labels):
        members = rng.permutation(np.flatnonzero(test_labels == label))
        weights = held[:, label]
        if weights.sum() == 0:
            # No device trains on this class: its test examples are spread evenly.
            weights = np.ones_like(weights)
        # Integer cut points: exact, so that the shares cover every example once.
        cuts = np.cumsum(weights)[:-1] * len(members) // weights.sum()
        for device, chunk in enumerate(np.split(members, cuts)):
            shares[device].extend(chunk.tolist())
    return [np.sort(np.asarray(share, dtype=np.int64)) for share in shares]
