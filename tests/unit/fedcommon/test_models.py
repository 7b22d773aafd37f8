"""The models build for both data sets' input shapes (digits 8x8, Fashion-MNIST 28x28)."""

from __future__ import annotations

import pytest
import torch

from fedcommon import models
from fedcommon.messages.v1 import ModelArchitecture


@pytest.mark.parametrize("architecture", list(ModelArchitecture))
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28)])
def test_every_architecture_maps_a_batch_to_one_logit_per_class(
    architecture: ModelArchitecture, input_shape: tuple[int, ...]
) -> None:
    model = models.build_model(architecture, input_shape=input_shape, num_classes=10, seed=0)

    logits = model(torch.zeros((3, *input_shape)))

    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_the_mlp_takes_its_hidden_units_and_keeps_64_by_default() -> None:
    # Execute
    default = models.build_model(
        ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0
    )
    wide = models.build_model(
        ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=128
    )

    # Assert: 64-64-10 by default (as before), 64-128-10 when asked.
    assert [tuple(a.shape) for a in models.get_arrays(default)] == [
        (64, 64),
        (64,),
        (10, 64),
        (10,),
    ]
    assert [tuple(a.shape) for a in models.get_arrays(wide)] == [
        (128, 64),
        (128,),
        (10, 128),
        (10,),
    ]
    assert wide(torch.zeros((2, 1, 8, 8))).shape == (2, 10)


def test_hidden_units_are_refused_for_the_cnn_and_below_one() -> None:
    with pytest.raises(ValueError, match="MLP only"):
        models.build_model(
            ModelArchitecture.CNN, input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=128
        )
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        models.build_model(
            ModelArchitecture.MLP, input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=0
        )
