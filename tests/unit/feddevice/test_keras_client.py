"""The Keras client over the platform's tensor names: the map is exact (a Keras and a PyTorch
device score one global model alike) and a round trip changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from fedcommon import datasets, model_files, models
from fedcommon.messages.v1 import ModelArchitecture
from feddevice import answer
from feddevice.array_client import ArrayTorchClient

keras_client = pytest.importorskip("feddevice.keras_client")
keras = keras_client.keras

DIGITS = datasets.load_dataset("digits")


def _keras_mlp() -> object:
    return keras.Sequential(
        [
            keras.Input((1, 8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


@pytest.fixture(scope="module")
def global_model() -> answer.GlobalModel:
    built = models.build_model(ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=3)
    return answer.GlobalModel(models.to_safetensors(built))


def _client(x: np.ndarray, y: np.ndarray) -> object:
    model = _keras_mlp()
    return keras_client.KerasClient(
        model,
        x,
        y,
        DIGITS.x_test,
        DIGITS.y_test,
        tensors=keras_client.dense_as_torch_linear(model, ["net.1", "net.3"]),
    )


def test_a_keras_and_a_pytorch_device_score_one_global_model_alike(
    global_model: answer.GlobalModel,
) -> None:
    torch_side = ArrayTorchClient(
        lambda: models.build_model(
            ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0
        ),
        DIGITS.x_train[:10],
        DIGITS.y_train[:10],
        DIGITS.x_test,
        DIGITS.y_test,
    ).evaluate(global_model.parameters, {})
    keras_side = _client(DIGITS.x_train[:10], DIGITS.y_train[:10]).evaluate(  # type: ignore[attr-defined]
        global_model.parameters, {}
    )
    assert keras_side.num_examples == torch_side.num_examples
    assert abs(keras_side.loss - torch_side.loss) < 1e-5
    assert keras_side.metrics["accuracy"] == pytest.approx(torch_side.metrics["accuracy"])


def test_the_weights_go_in_and_come_out_unchanged(global_model: answer.GlobalModel) -> None:
    client = _client(DIGITS.x_train[:10], DIGITS.y_train[:10])
    client._load(global_model.parameters)  # type: ignore[attr-defined]
    back = client._parameters()  # type: ignore[attr-defined]
    assert set(back) == set(global_model.parameters)
    for name, array in global_model.parameters.items():
        assert np.array_equal(back[name], array), name


def test_a_round_of_training_gives_an_update_the_platform_takes(
    global_model: answer.GlobalModel,
) -> None:
    client = _client(DIGITS.x_train[:200], DIGITS.y_train[:200])
    result = client.fit(  # type: ignore[attr-defined]
        global_model.parameters, {"learning_rate": 0.3, "local_epochs": 1, "batch_size": 16}
    )
    delta = answer.delta_of(global_model, result)
    assert result.num_examples == 200 and 0 <= result.metrics["train_accuracy"] <= 1
    assert any(np.abs(d).sum() > 0 for d in delta)


def test_fedprox_is_refused_rather_than_ignored(global_model: answer.GlobalModel) -> None:
    client = _client(DIGITS.x_train[:10], DIGITS.y_train[:10])
    with pytest.raises(ValueError, match="FedProx"):
        client.fit(global_model.parameters, {"learning_rate": 0.1, "proximal_mu": 0.1})  # type: ignore[attr-defined]


def test_a_map_naming_a_weight_the_model_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="has no weight"):
        keras_client.KerasClient(
            _keras_mlp(),
            DIGITS.x_train[:10],
            DIGITS.y_train[:10],
            tensors={"net.1.weight": keras_client.KerasTensor("nowhere/kernel", transpose=True)},
        )


def test_a_scalar_weight_comes_back_as_a_scalar() -> None:
    # Prepare: an uploaded model whose weights include a 0-d one (a learned scale).
    class Scale(keras.layers.Layer):  # type: ignore[misc,name-defined]
        def build(self, input_shape: object) -> None:
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

        def call(self, inputs: object) -> object:
            return inputs * self.scale

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), Scale()])
    names = [weight.path for weight in model.weights]
    arrays = [np.asarray(keras.ops.convert_to_numpy(w), np.float32) for w in model.weights]
    global_model = answer.GlobalModel(model_files.write(names, arrays))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    client = keras_client.KerasClient(model, x, np.zeros(8, np.int64))

    # Execute
    result = client.fit(global_model.parameters, {"learning_rate": 0.1, "batch_size": 4})

    # Assert: the update fits the model, the scalar included.
    delta = answer.delta_of(global_model, result)
    assert [d.shape for d in delta] == [a.shape for a in arrays]
    assert () in [d.shape for d in delta]
