"""A stale pid file whose pid another PostgreSQL now holds is not that server: stopping the
stale one must not stop the other (two stacks on one machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedengine import infra

pytestmark = [pytest.mark.integration]


def test_a_stale_pid_file_naming_another_server_stops_nothing(tmp_path: Path) -> None:
    running = tmp_path / "running"
    infra.start_postgres(running)
    try:
        pid = infra.postgres_pid(running)
        assert pid is not None
        stale = tmp_path / "stale"
        stale.mkdir()
        (stale / "postmaster.pid").write_text(f"{pid}\n{stale}\n")

        assert infra.postgres_pid(stale) is None
        infra.stop_postgres(stale)

        assert not (stale / "postmaster.pid").exists()
        assert infra.postgres_pid(running) == pid
    finally:
        infra.stop_postgres(running)
