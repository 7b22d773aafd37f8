from __future__ import annotations

import stat
from pathlib import Path
from uuid import uuid4

import pytest

from feddevice.state import SentResults, StateError, load_or_create_identity


def test_an_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "d", "dev-a")
    again = load_or_create_identity(tmp_path / "d")
    assert again.device_id == "dev-a" and again.public_key == first.public_key
    assert stat.S_IMODE((tmp_path / "d" / "identity.key").stat().st_mode) == 0o600


def test_a_folder_of_another_device_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "dev-a")
    with pytest.raises(StateError, match="holds device dev-a, not dev-b"):
        load_or_create_identity(tmp_path, "dev-b")


def test_half_an_identity_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "dev-a")
    (tmp_path / "device.json").unlink()
    with pytest.raises(StateError, match="half an identity"):
        load_or_create_identity(tmp_path, "dev-a")


@pytest.mark.parametrize("device_id", ["bad id", "x" * 201, "nul\x00", ""])
def test_a_device_id_the_wire_refuses_is_refused_at_once(tmp_path: Path, device_id: str) -> None:
    with pytest.raises(ValueError):
        load_or_create_identity(tmp_path, device_id or "\n")


def test_a_generated_id_is_random_and_valid(tmp_path: Path) -> None:
    a = load_or_create_identity(tmp_path / "a")
    b = load_or_create_identity(tmp_path / "b")
    assert a.device_id.startswith("dev-") and a.device_id != b.device_id


def test_sent_results_survive_and_old_ones_are_pruned(tmp_path: Path) -> None:
    kept, old = uuid4(), uuid4()
    SentResults(tmp_path).put(kept, b"update")
    SentResults(tmp_path).put(old, b"old")
    results = SentResults(tmp_path)
    assert results.get(kept) == b"update" and results.get(uuid4()) is None
    assert results.prune(older_than_s=-1) == 2
    assert results.get(kept) is None
