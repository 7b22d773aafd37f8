"""fedcommon.model_files: what survives the platform's copy of a user's model file, and what an
upload is refused for before a task could fail on it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from fedcommon import model_files
from fedcommon.constraints import INT32_MAX


def _raw(header: dict[str, object], body: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


def test_a_scalar_tensor_keeps_its_shape_through_the_platforms_copy() -> None:
    # Prepare: a model with a 0-d parameter (a learned temperature), as torch saves it.
    upload = save({"scale": np.array(2.5, np.float32), "weight": np.ones((2, 3), np.float32)})

    # Execute: version 0 is written from the upload; a later version adds a delta.
    version_0 = model_files.write(*model_files.read(upload))
    version_1 = model_files.add(version_0, [np.array(0.5, np.float32), np.ones((2, 3))])

    # Assert: the scalar stays 0-d, so a device's update of it still fits the model.
    assert [s.shape for s in model_files.inspect(upload)] == [(), (2, 3)]
    assert model_files.shapes(version_0) == [[], [2, 3]]
    names, arrays = model_files.read(version_1)
    assert names == ["scale", "weight"]
    assert arrays[0].shape == ()
    np.testing.assert_equal(arrays[0], np.float32(3.0))
    np.testing.assert_equal(arrays[1], np.full((2, 3), 2.0, np.float32))


def test_write_takes_views_that_are_not_contiguous() -> None:
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T

    _, arrays = model_files.read(model_files.write(["t"], [transposed]))

    np.testing.assert_equal(arrays[0], transposed)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # A dimension beside a 0 holds no bytes, yet round.opened cannot carry it (Int32).
        (
            _raw(
                {
                    "a": {"dtype": "F32", "shape": [0, INT32_MAX + 1], "data_offsets": [0, 0]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                b"\0" * 4,
            ),
            "no valid shape",
        ),
        # Nothing to train: an update of no values (and secure aggregation needs one).
        (
            _raw({"a": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}}),
            "holds no values",
        ),
    ],
    ids=["a-dimension-past-int32-beside-a-0", "no-values"],
)
def test_a_file_no_task_could_train_is_refused_at_upload(data: bytes, reason: str) -> None:
    with pytest.raises(model_files.BadModelFile, match=reason):
        model_files.inspect(data)


def test_empty_tensors_beside_others_and_the_largest_dimension_are_taken() -> None:
    data = _raw(
        {
            "empty": {"dtype": "F32", "shape": [0, INT32_MAX], "data_offsets": [0, 0]},
            "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        },
        struct.pack("<f", 1.0),
    )

    assert [s.shape for s in model_files.inspect(data)] == [(0, INT32_MAX), (1,)]
