from __future__ import annotations

import pytest

from feddevice.app import AppError, DeviceContext, load

CONTEXT = DeviceContext("dev-1", {"share": "2"})


def test_a_factory_is_called_with_the_device_context() -> None:
    client = load("tests.integration.device_apps:raising", CONTEXT)
    assert type(client).__name__ == "RaisingClient"


def test_a_client_class_is_a_factory_not_a_client() -> None:
    with pytest.raises(TypeError):
        # RaisingClient() takes no context: a class is called like a factory.
        load("tests.integration.device_apps:RaisingClient", CONTEXT)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("no_colon", "expected module:attribute"),
        ("not.a.module.anywhere:x", "cannot import"),
        ("tests.integration.device_apps:nothing", "has no attribute"),
        ("tests.integration.device_apps:time", "neither a client"),
    ],
)
def test_a_bad_app_is_refused_with_its_reason(spec: str, reason: str) -> None:
    with pytest.raises(AppError, match=reason):
        load(spec, CONTEXT)
