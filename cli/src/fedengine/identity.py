"""The stack's secrets under FEDENGINE_HOME: the JWT signing secret and the service keys."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fedcommon import signing, trust
from fedengine.settings import LauncherSettings


def jwt_secret(settings: LauncherSettings) -> tuple[str, Path]:
    """Return the signing secret: configured, or generated once under FEDENGINE_HOME."""
    path = settings.home / "jwt_secret"
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value(), path
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip(), path


def service_keys(settings: LauncherSettings) -> dict[str, str]:
    """Return every service's private key (hex), generated once under FEDENGINE_HOME/keys."""
    folder = settings.home / "keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys: dict[str, str] = {}
    for name in trust.SERVICES:
        path = folder / f"{name}.key"
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(signing.private_key_to_bytes(signing.generate_private_key()).hex())
        keys[name] = path.read_text().strip()
    return keys


def public_keys(private: dict[str, str]) -> dict[str, str]:
    """Return the public halves of ``private`` (hex), as FEDENGINE_SERVICE_KEYS carries them."""
    return {
        name: signing.public_key_bytes(signing.private_key_from_bytes(bytes.fromhex(key))).hex()
        for name, key in private.items()
    }
