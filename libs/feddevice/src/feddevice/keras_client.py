"""A ready-made client for a Keras 3 model, over the same interface and wire format as the
PyTorch one.

Keras runs on the torch backend unless KERAS_BACKEND says otherwise (so no TensorFlow download
is needed; with TensorFlow installed, KERAS_BACKEND=tensorflow runs it there). The platform
names tensors as the task's model does; a Keras model names its weights by layer path and lays
a dense kernel out as (inputs, outputs) where PyTorch's Linear has (outputs, inputs). A
:class:`KerasTensor` map says which Keras weight each platform tensor is, and whether it is
transposed, so that Keras and PyTorch devices of the same architecture train one model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras

from feddevice.client import Config, EvaluateResult, FitResult, Parameters


@dataclass(frozen=True)
class KerasTensor:
    """One Keras weight, by its path (``model.weights[i].path``), and whether the platform's
    tensor is its transpose."""

    path: str
    transpose: bool = False


def dense_as_torch_linear(model: keras.Model, prefixes: Sequence[str]) -> dict[str, KerasTensor]:
    """The map for a model whose Dense layers, in order, are PyTorch Linear layers named
    ``prefixes`` (``["net.1", "net.3"]`` for ``nn.Sequential(Flatten, Linear, ReLU, Linear)``
    under the attribute ``net``)."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if len(dense) != len(prefixes):
        raise ValueError(f"{len(dense)} Dense layers for {len(prefixes)} prefixes")
    mapping = {}
    for layer, prefix in zip(dense, prefixes, strict=True):
        mapping[f"{prefix}.weight"] = KerasTensor(layer.kernel.path, transpose=True)
        if layer.bias is not None:
            mapping[f"{prefix}.bias"] = KerasTensor(layer.bias.path)
    return mapping


def sgd(config: Config) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=float(config["learning_rate"]))


class KerasClient:
    """Train a Keras model on (x, y) arrays for the round's ``local_epochs`` at its
    ``batch_size``, and evaluate it on held-out arrays. ``tensors`` maps each platform tensor
    name to its Keras weight (default: the Keras paths are the names, nothing transposed)."""

    def __init__(
        self,
        model: keras.Model,
        x_train: npt.NDArray[Any],
        y_train: npt.NDArray[Any],
        x_test: npt.NDArray[Any] | None = None,
        y_test: npt.NDArray[Any] | None = None,
        *,
        tensors: Mapping[str, KerasTensor] | None = None,
        optimizer: Callable[[Config], keras.optimizers.Optimizer] = sgd,
        loss: keras.losses.Loss | None = None,
    ) -> None:
        self.model = model
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.tensors = (
            dict(tensors)
            if tensors is not None
            else {weight.path: KerasTensor(weight.path) for weight in model.weights}
        )
        self.optimizer = optimizer
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        paths = {weight.path for weight in model.weights}
        unknown = sorted(t.path for t in self.tensors.values() if t.path not in paths)
        if unknown:
            raise ValueError(f"KerasClient: the model has no weight {', '.join(unknown)}")

    def _load(self, parameters: Parameters) -> None:
        missing = sorted(set(self.tensors) - set(parameters))
        if missing:
            raise ValueError(f"KerasClient: the global model lacks {', '.join(missing)}")
        by_path = {weight.path: weight for weight in self.model.weights}
        for name, target in self.tensors.items():
            value = np.asarray(parameters[name], dtype=np.float32)
            by_path[target.path].assign(value.T if target.transpose else value)

    def _parameters(self) -> dict[str, np.ndarray]:
        by_path = {weight.path: weight for weight in self.model.weights}
        named = {}
        for name, target in self.tensors.items():
            value = np.asarray(keras.ops.convert_to_numpy(by_path[target.path]), np.float32)
            # np.asarray keeps a scalar weight 0-d (np.ascontiguousarray makes it shape (1,),
            # which no longer fits the model's tensor).
            named[name] = np.asarray(value.T if target.transpose else value, order="C")
        return named

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        if float(config.get("proximal_mu", 0.0)) > 0:
            raise ValueError("KerasClient does not implement FedProx's proximal term")
        if "seed" in config:
            keras.utils.set_random_seed(int(config["seed"]) % 2**32)
        self._load(parameters)
        self.model.compile(optimizer=self.optimizer(config), loss=self.loss, metrics=["accuracy"])
        history = self.model.fit(
            self.x_train,
            self.y_train,
            batch_size=int(config.get("batch_size", 32)),
            epochs=int(config.get("local_epochs", 1)),
            shuffle=True,
            verbose=0,
        )
        return FitResult(
            self._parameters(),
            len(self.x_train),
            {
                "train_loss": float(history.history["loss"][-1]),
                "train_accuracy": float(history.history["accuracy"][-1]),
            },
        )

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        if self.x_test is None or self.y_test is None:
            raise ValueError("KerasClient.evaluate: this client has no test data")
        self._load(parameters)
        self.model.compile(
            optimizer=sgd({"learning_rate": 0.1}), loss=self.loss, metrics=["accuracy"]
        )
        scores = self.model.evaluate(self.x_test, self.y_test, verbose=0, return_dict=True)
        return EvaluateResult(
            float(scores["loss"]), len(self.x_test), {"accuracy": float(scores["accuracy"])}
        )
