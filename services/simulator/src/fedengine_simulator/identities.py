"""Device identity keys, kept on local disk so a restarted fleet keeps its identities.

Each device's Ed25519 key is derived from one fleet secret (``fleet.secret``, 32 random bytes,
mode 0600) and the device's id, with HMAC-SHA256: one small file for a fleet of any size (a
file per device made a 10,000-device fleet write 10,000 files at its first start), and the
simulator processes that share a fleet (``SIMULATOR_SHARD``) derive the same keys from it. The
secret is created once, by whichever process comes first (an exclusive create: a second one
reads it). Keys of the older one-file-per-device layout (``<device_id>.key``) stay in use for
their devices. The secret stands for every key of the fleet: it is a simulation's, as the
simulator plays every device; a real device keeps its own key (feddevice).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing

SECRET_FILE = "fleet.secret"
_SECRET_BYTES = 32


def load_or_create(folder: Path, device_ids: list[str]) -> dict[str, Ed25519PrivateKey]:
    """Return one private key per device."""
    folder.mkdir(parents=True, exist_ok=True)
    secret = _fleet_secret(folder / SECRET_FILE)
    keys = {}
    for device_id in device_ids:
        legacy = folder / f"{device_id}.key"
        if legacy.exists():
            keys[device_id] = signing.private_key_from_bytes(legacy.read_bytes())
        else:
            seed = hmac.new(secret, device_id.encode(), hashlib.sha256).digest()
            keys[device_id] = signing.private_key_from_bytes(seed)
    return keys


def _fleet_secret(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secrets.token_bytes(_SECRET_BYTES))
        handle.flush()
        os.fsync(handle.fileno())
    return _read_secret(path)


def _read_secret(path: Path, *, wait_s: float = 5.0) -> bytes:
    """Read the secret; another process that just created the file may still be writing its
    32 bytes (they come in one write, so a short wait sees them)."""
    deadline = time.monotonic() + wait_s
    while True:
        data = path.read_bytes()
        if len(data) == _SECRET_BYTES:
            return data
        if time.monotonic() > deadline:
            raise ValueError(f"{path}: a fleet secret is {_SECRET_BYTES} bytes, not {len(data)}")
        time.sleep(0.01)
