from __future__ import annotations

import numpy as np
import pytest

from fedcommon import datasets, models
from fedcommon.messages.v1 import DeviceType, ModelArchitecture
from feddevice.torch_training import train_local
from fedengine_simulator.core import fleet


@pytest.mark.parametrize("architecture", list(ModelArchitecture))
def test_local_training_lowers_the_loss_and_returns_the_delta(
    architecture: ModelArchitecture,
) -> None:
    data = datasets.load_dataset("digits")
    model = models.build_model(architecture, input_shape=data.input_shape, num_classes=10, seed=0)
    start = models.get_arrays(model)
    x, y = data.x_train[:200], data.y_train[:200]

    first = train_local(model, x, y, epochs=1, batch_size=16, learning_rate=0.3, seed=1)
    later = train_local(model, x, y, epochs=3, batch_size=16, learning_rate=0.3, seed=2)

    assert later.train_loss < first.train_loss
    assert first.num_examples == 200
    end = models.get_arrays(model)
    total = [a + b for a, b in zip(first.delta, later.delta, strict=True)]
    for moved, before, after in zip(total, start, end, strict=True):
        np.testing.assert_allclose(before + moved, after, atol=1e-5)


def test_training_is_reproducible_for_a_seed() -> None:
    data = datasets.load_dataset("digits")

    def run() -> list[np.ndarray]:
        model = models.build_model(
            ModelArchitecture.MLP, input_shape=data.input_shape, num_classes=10, seed=0
        )
        return train_local(
            model,
            data.x_train[:64],
            data.y_train[:64],
            epochs=1,
            batch_size=8,
            learning_rate=0.1,
            seed=5,
        ).delta

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_partition_is_refused() -> None:
    data = datasets.load_dataset("digits")
    model = models.build_model(
        ModelArchitecture.MLP, input_shape=data.input_shape, num_classes=10, seed=0
    )
    with pytest.raises(ValueError, match="empty"):
        train_local(
            model,
            data.x_train[:0],
            data.y_train[:0],
            epochs=1,
            batch_size=8,
            learning_rate=0.1,
            seed=0,
        )


def test_fleet_layout_cycles_device_types_with_stable_ids() -> None:
    devices = fleet.layout("f", 5)

    assert [d.device_id for d in devices] == ["f-0000", "f-0001", "f-0002", "f-0003", "f-0004"]
    assert [d.device_type for d in devices][:4] == [
        DeviceType.MOBILE,
        DeviceType.IOT,
        DeviceType.DESKTOP,
        DeviceType.CLOUD,
    ]
    assert devices[1].capabilities.has_battery and not devices[3].capabilities.has_battery
