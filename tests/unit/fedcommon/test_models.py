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
