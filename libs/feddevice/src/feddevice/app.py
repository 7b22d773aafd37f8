"""Load the user's client from ``module:attribute``, as ``fedengine device run --app`` names it.

The attribute is a client (anything with ``fit`` and ``evaluate``) or a factory that takes a
:class:`DeviceContext` and returns one, so that one module can serve every device of a
deployment (each reading its own data, by the settings it is given).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from feddevice.client import Client


class AppError(ValueError):
    """The app cannot be loaded as given."""


@dataclass(frozen=True)
class DeviceContext:
    """What a client factory is told: the device it runs on and the ``--set key=value``
    settings given on the command line."""

    device_id: str
    settings: Mapping[str, str] = field(default_factory=dict)


def load(spec: str, context: DeviceContext, *, search: Path | None = None) -> Client:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppError(f"--app {spec!r}: expected module:attribute")
    if search is not None and str(search) not in sys.path:
        sys.path.insert(0, str(search))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"--app {spec!r}: cannot import {module_name}: {exc}") from exc
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AppError(f"--app {spec!r}: {module_name} has no attribute {attribute}")
        target = getattr(target, part)
    client = target if not isinstance(target, type) and _is_client(target) else None
    if client is None and callable(target):
        client = target(context)
    if not _is_client(client):
        raise AppError(
            f"--app {spec!r}: neither a client (with fit and evaluate) nor a factory returning one"
        )
    return client  # type: ignore[return-value]


def _is_client(candidate: object) -> bool:
    return callable(getattr(candidate, "fit", None)) and callable(
        getattr(candidate, "evaluate", None)
    )
