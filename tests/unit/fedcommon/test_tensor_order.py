from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from fedcommon import models, tensor_order
from fedcommon.messages.v1 import ModelArchitecture


def test_a_platform_model_names_its_state_dict_order() -> None:
    model = models.build_model(ModelArchitecture.CNN, input_shape=(1, 8, 8), num_classes=10, seed=0)
    data = models.to_safetensors(model)
    assert tensor_order.order_of(data) == list(model.state_dict())
    # The file's own listing is sorted by name, which is why the order must be carried.
    assert list(tensor_order.header(data))[1:] != list(model.state_dict())


def _file(order: object, tensors: tuple[str, ...] = ("a", "b")) -> bytes:
    arrays = {name: np.zeros(2, np.float32) for name in tensors}
    return save(arrays, metadata={tensor_order.ORDER_KEY: json.dumps(order)})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than"),
        (struct.pack("<Q", 2**63) + b"{}", "exceeds the file"),
        (struct.pack("<Q", 3) + b"[1]", "not a JSON object"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not JSON"),
        (save({"a": np.zeros(1, np.float32)}), "names no tensor order"),
        (_file(["a"]), "each of the file's tensors once"),
        (_file(["a", "a", "b"]), "each of the file's tensors once"),
        (_file(["a", "c"]), "each of the file's tensors once"),
        (_file({"a": 1}), "each of the file's tensors once"),
    ],
)
def test_a_file_without_a_usable_order_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(tensor_order.BadModelFile, match=reason):
        tensor_order.order_of(data)


def test_an_order_that_lists_every_tensor_once_is_taken() -> None:
    assert tensor_order.order_of(_file(["b", "a"])) == ["b", "a"]


def test_a_header_nested_past_what_json_can_walk_is_a_bad_model_file() -> None:
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(tensor_order.BadModelFile, match="nested too deeply"):
        tensor_order.order_of(struct.pack("<Q", len(deep)) + deep)
