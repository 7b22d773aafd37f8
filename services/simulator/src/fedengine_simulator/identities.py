"""Device identity keys, kept on local disk so a restarted fleet keeps its identities.

A fleet's keys live in one file (``keys.json``, mode 0600, written whole and atomically):
a file per device made a 10,000-device fleet write 10,000 files at its first start. Keys in
the older one-file-per-device layout (``<device_id>.key``) are read and carried over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing

KEYS_FILE = "keys.json"


def load_or_create(folder: Path, device_ids: list[str]) -> dict[str, Ed25519PrivateKey]:
    """Return one private key per device, creating the ones not yet on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEYS_FILE
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    keys = {}
    changed = False
    for device_id in device_ids:
        if device_id in stored:
            keys[device_id] = signing.private_key_from_bytes(bytes.fromhex(stored[device_id]))
            continue
        legacy = folder / f"{device_id}.key"
        key = (
            signing.private_key_from_bytes(legacy.read_bytes())
            if legacy.exists()
            else signing.generate_private_key()
        )
        stored[device_id] = signing.private_key_to_bytes(key).hex()
        keys[device_id] = key
        changed = True
    if changed:
        _write_private(path, json.dumps(stored).encode())
    return keys


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only, replacing ``path`` in one step."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
