from __future__ import annotations

import stat
from pathlib import Path

from fedcommon import signing
from fedengine_simulator import identities


def public(keys: dict[str, object], device: str) -> bytes:
    return signing.public_key_bytes(keys[device])  # type: ignore[arg-type]


def test_keys_come_from_one_private_secret_and_survive_a_restart(tmp_path: Path) -> None:
    first = identities.load_or_create(tmp_path, ["a", "b"])
    again = identities.load_or_create(tmp_path, ["a", "b", "c"])

    assert [p.name for p in tmp_path.iterdir()] == [identities.SECRET_FILE]
    assert stat.S_IMODE((tmp_path / identities.SECRET_FILE).stat().st_mode) == 0o600
    for device in ("a", "b"):
        assert public(first, device) == public(again, device)
    assert len({public(again, d) for d in ("a", "b", "c")}) == 3


def test_another_process_of_the_fleet_derives_the_same_keys(tmp_path: Path) -> None:
    mine = identities.load_or_create(tmp_path, ["a", "b"])
    theirs = identities.load_or_create(tmp_path, ["b", "a"])
    other_fleet = identities.load_or_create(tmp_path / "other", ["a"])

    assert public(mine, "a") == public(theirs, "a") and public(mine, "b") == public(theirs, "b")
    assert public(other_fleet, "a") != public(mine, "a")


def test_keys_of_the_older_one_file_per_device_layout_stay_in_use(tmp_path: Path) -> None:
    key = signing.generate_private_key()
    (tmp_path / "a.key").write_bytes(signing.private_key_to_bytes(key))

    keys = identities.load_or_create(tmp_path, ["a"])

    assert public(keys, "a") == signing.public_key_bytes(key)
