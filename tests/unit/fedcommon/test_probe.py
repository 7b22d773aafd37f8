"""The container probe: passes on a fresh ready file, fails on a missing or stale one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedcommon import probe, runtime


def test_a_fresh_file_passes_a_missing_or_stale_one_fails(tmp_path: Path) -> None:
    ready = tmp_path / "registry.ready"
    assert "does not exist" in (probe.check(ready, max_age_s=30) or "")
    runtime.mark_ready(tmp_path, "registry")
    assert probe.check(ready, max_age_s=30) is None
    old = time.time() - 120
    os.utime(ready, (old, old))
    assert "stuck" in (probe.check(ready, max_age_s=30) or "")
    runtime.touch_ready(tmp_path, "registry")  # the event loop turned again
    assert probe.main([str(ready), "--max-age-s", "30"]) == 0


def test_touching_a_removed_file_does_not_bring_it_back(tmp_path: Path) -> None:
    runtime.touch_ready(tmp_path, "gone")
    assert not (tmp_path / "gone.ready").exists()
    assert probe.main([str(tmp_path / "gone.ready")]) == 1
