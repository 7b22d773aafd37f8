"""What a device keeps on its own disk: its identity key and the results it has sent.

Both survive a crash or a restart: the key, so that the device comes back as itself (the
registry knows it by its public key); the results, so that a train request redelivered after
a restart is answered with the very update already sent (same message id, same bytes, which
the aggregator counts once) and never with a second, different one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import TypeAdapter, ValidationError

from fedcommon import signing
from fedcommon.constraints import DeviceId

_DEVICE_ID: TypeAdapter[str] = TypeAdapter(DeviceId)
# Sent results older than this are removed at start: their rounds closed long ago.
KEEP_SENT_S = 7 * 24 * 3600


class StateError(ValueError):
    """The state folder cannot be used as asked (it belongs to another device, say)."""


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass(frozen=True)
class Identity:
    device_id: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return signing.public_key_bytes(self.key)


def load_or_create_identity(folder: Path, device_id: str | None = None) -> Identity:
    """Return the identity kept in ``folder``, creating it on first use.

    ``device_id`` names a new device (default: ``dev-`` and 12 random hex digits); given for a
    folder that already holds another device, it is refused rather than silently ignored.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, about_path = folder / "identity.key", folder / "device.json"
    if key_path.exists() and about_path.exists():
        try:
            stored = _DEVICE_ID.validate_python(json.loads(about_path.read_text())["device_id"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise StateError(f"{about_path} is damaged: {exc}") from exc
        if device_id is not None and device_id != stored:
            raise StateError(f"{folder} holds device {stored}, not {device_id}")
        return Identity(stored, signing.private_key_from_bytes(key_path.read_bytes()))
    if key_path.exists() or about_path.exists():
        raise StateError(f"{folder} holds half an identity: remove it or restore the other file")
    chosen = _DEVICE_ID.validate_python(device_id or f"dev-{secrets.token_hex(6)}")
    key = signing.generate_private_key()
    _write_atomically(key_path, signing.private_key_to_bytes(key))
    _write_atomically(about_path, json.dumps({"device_id": chosen}).encode(), mode=0o644)
    return Identity(chosen, key)


class SentResults:
    """The answers this device has sent (or is about to), one file per round try (by
    round_id) or evaluation (by evaluation_id: ids of one kind never collide with the other's,
    both being random UUIDs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "sent"
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, round_id: UUID) -> Path:
        return self.folder / f"{round_id}.msg"

    def get(self, round_id: UUID) -> bytes | None:
        """The record value kept for ``round_id``, if this device answered that try."""
        path = self._path(round_id)
        return path.read_bytes() if path.exists() else None

    def put(self, round_id: UUID, value: bytes) -> None:
        """Keep ``value`` before it is sent: from here on, the try is answered with it only."""
        _write_atomically(self._path(round_id), value)

    def prune(self, *, older_than_s: float = KEEP_SENT_S) -> int:
        """Remove results of long-closed rounds; return how many."""
        cutoff, removed = time.time() - older_than_s, 0
        for path in self.folder.glob("*.msg"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
