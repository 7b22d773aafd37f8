from __future__ import annotations

import stat
from pathlib import Path

from fedcommon import signing
from fedengine_simulator import identities


def test_keys_are_kept_in_one_private_file_and_survive_a_restart(tmp_path: Path) -> None:
    first = identities.load_or_create(tmp_path, ["a", "b"])
    again = identities.load_or_create(tmp_path, ["a", "b", "c"])

    assert [p.name for p in tmp_path.iterdir()] == [identities.KEYS_FILE]
    assert stat.S_IMODE((tmp_path / identities.KEYS_FILE).stat().st_mode) == 0o600
    for device in ("a", "b"):
        assert signing.public_key_bytes(first[device]) == signing.public_key_bytes(again[device])
    assert set(again) == {"a", "b", "c"}


def test_keys_of_the_older_one_file_per_device_layout_are_carried_over(tmp_path: Path) -> None:
    key = signing.generate_private_key()
    (tmp_path / "a.key").write_bytes(signing.private_key_to_bytes(key))

    keys = identities.load_or_create(tmp_path, ["a"])

    assert signing.public_key_bytes(keys["a"]) == signing.public_key_bytes(key)
