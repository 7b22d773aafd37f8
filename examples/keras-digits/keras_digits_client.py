"""A Keras 3 client for FedEngine's device runtime: the same MLP as the PyTorch digits example,
written in Keras, on one share of scikit-learn's digits. Keras and PyTorch devices of this
architecture train one model together (see README.md).

    fedengine device run --app keras_digits_client:make_client --app-path examples/keras-digits \
        --set share=1 --set shares=4 ...
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from feddevice.app import DeviceContext
from feddevice.keras_client import KerasClient, dense_as_torch_linear, keras


def build_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((1, 8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def my_share(share: int, shares: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This device's examples: an IID share of the digits' training split (pixels / 16)."""
    features, labels = load_digits(return_X_y=True)
    x = (features.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    order = np.random.default_rng(seed).permutation(len(x_train))
    mine = np.array_split(order, shares)[share]
    return x_train[mine], y_train[mine]


def make_client(context: DeviceContext) -> KerasClient:
    x, y = my_share(
        int(context.settings.get("share", "0")), int(context.settings.get("shares", "1"))
    )
    held_out = max(1, len(x) // 5)
    model = build_model()
    # The task's built-in MLP names its tensors as PyTorch does: net.1 and net.3 are its two
    # Linear layers, whose weights are these Dense kernels transposed.
    return KerasClient(
        model,
        x[held_out:],
        y[held_out:],
        x[:held_out],
        y[:held_out],
        tensors=dense_as_torch_linear(model, ["net.1", "net.3"]),
    )
