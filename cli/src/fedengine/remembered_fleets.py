"""The fleets a stack runs, remembered under FEDENGINE_HOME so that ``fedengine up`` brings
them back after ``fedengine down`` (or a crash of the whole machine).

``<home>/fleets.json`` maps each fleet's name to the options it was started with (``Fleet``'s
fields: size, data set, partitioning, seed, attackers...; never its enrolment token, which
``up`` issues afresh). A fleet is remembered once it has started, and forgotten when it is
stopped on purpose (``fedengine fleet stop``, or a demo removing its own fleet); ``down`` keeps
it. Its devices come back under the same ids, with the same keys: a simulator names them after
its fleet and keeps their keys under ``<home>/simulator/<fleet>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedengine.settings import LauncherSettings


def fleets_file(settings: LauncherSettings) -> Path:
    return settings.home / "fleets.json"


@contextlib.contextmanager
def _locked(settings: LauncherSettings) -> Iterator[None]:
    """Serialise read-modify-write among ``fedengine`` commands run at once."""
    settings.home.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(settings.home / ".fleets.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _read(settings: LauncherSettings) -> dict[str, dict[str, Any]]:
    path = fleets_file(settings)
    if not path.exists():
        return {}
    fleets: dict[str, dict[str, Any]] = json.loads(path.read_text()).get("fleets", {})
    return fleets


def _write(settings: LauncherSettings, fleets: dict[str, dict[str, Any]]) -> None:
    path = fleets_file(settings)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"fleets": fleets}, handle, indent=2)
    os.replace(temporary, path)


def remembered(settings: LauncherSettings) -> list[dict[str, Any]]:
    """Every remembered fleet's options, in the order they were first started."""
    with _locked(settings):
        return list(_read(settings).values())


def remember(settings: LauncherSettings, options: dict[str, Any]) -> None:
    """Remember a fleet that started (``options["name"]`` names it), replacing its old entry."""
    with _locked(settings):
        fleets = _read(settings)
        fleets[str(options["name"])] = options
        _write(settings, fleets)


def forget(settings: LauncherSettings, name: str) -> bool:
    """Forget fleet ``name``; return whether it was remembered."""
    with _locked(settings):
        fleets = _read(settings)
        if fleets.pop(name, None) is None:
            return False
        _write(settings, fleets)
        return True
