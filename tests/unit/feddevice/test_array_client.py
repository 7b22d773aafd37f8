from __future__ import annotations

import functools

import numpy as np
import pytest

from fedcommon import datasets, models
from fedcommon.messages.v1 import ModelArchitecture
from feddevice import answer
from feddevice.array_client import ArrayTorchClient, dp_sgd_of
from feddevice.torch_training import train_local

DIGITS = datasets.load_dataset("digits")
BUILD = functools.partial(
    models.build_model, ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0
)
CONFIG = {"learning_rate": 0.3, "local_epochs": 2, "batch_size": 16, "seed": 5}


def test_the_client_trains_exactly_as_the_training_loop_does() -> None:
    x, y = DIGITS.x_train[:200], DIGITS.y_train[:200]
    global_model = answer.GlobalModel(models.to_safetensors(BUILD()))
    result = ArrayTorchClient(BUILD, x, y).fit(dict(global_model.parameters), CONFIG)
    reference = train_local(
        BUILD(), x, y, epochs=2, batch_size=16, learning_rate=0.3, seed=5, proximal_mu=0.0
    )
    delta = answer.delta_of(global_model, result)
    assert all(np.array_equal(a, b) for a, b in zip(delta, reference.delta, strict=True))
    assert result.num_examples == 200
    assert result.metrics["train_loss"] == reference.train_loss


def test_local_dp_settings_reach_the_client_and_it_runs_dp_sgd() -> None:
    config = {
        **CONFIG,
        "local_dp.noise_multiplier": 1.0,
        "local_dp.sample_rate": 0.1,
        "local_dp.steps": 3,
        "local_dp.max_grad_norm": 1.0,
    }
    settings = dp_sgd_of(config)
    assert settings is not None and settings.steps == 3
    assert ArrayTorchClient.supports_local_dp
    global_model = answer.GlobalModel(models.to_safetensors(BUILD()))
    client = ArrayTorchClient(BUILD, DIGITS.x_train[:100], DIGITS.y_train[:100])
    result = client.fit(dict(global_model.parameters), config)
    # DP-SGD reports nothing measured on the data: loss and accuracy stay zero.
    assert result.metrics == {"train_loss": 0.0, "train_accuracy": 0.0}
    assert any(np.abs(d).sum() > 0 for d in answer.delta_of(global_model, result))


def test_a_round_without_local_dp_has_no_dp_settings() -> None:
    assert dp_sgd_of(CONFIG) is None


def test_evaluation_needs_held_out_data() -> None:
    parameters = answer.GlobalModel(models.to_safetensors(BUILD())).parameters
    with pytest.raises(ValueError, match="no test data"):
        ArrayTorchClient(BUILD, DIGITS.x_train[:10], DIGITS.y_train[:10]).evaluate(parameters, {})
    scored = ArrayTorchClient(
        BUILD, DIGITS.x_train[:10], DIGITS.y_train[:10], DIGITS.x_test, DIGITS.y_test
    ).evaluate(parameters, {})
    assert scored.num_examples == len(DIGITS.y_test) and 0 <= scored.metrics["accuracy"] <= 1
