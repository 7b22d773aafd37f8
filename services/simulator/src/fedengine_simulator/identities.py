"""Device identity keys, kept on local disk so a restarted fleet keeps its identities."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing


def load_or_create(folder: Path, device_ids: list[str]) -> dict[str, Ed25519PrivateKey]:
    """Return one private key per device, creating (mode 0600) the ones not yet on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = {}
    for device_id in device_ids:
        path = folder / f"{device_id}.key"
        if path.exists():
            keys[device_id] = signing.private_key_from_bytes(path.read_bytes())
            continue
        key = signing.generate_private_key()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(signing.private_key_to_bytes(key))
        keys[device_id] = key
    return keys
