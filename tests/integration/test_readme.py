"""The README's newcomer path, run as written: up, fleet, create a task, start it right away,
watch it, download the model, stop the fleet, down.

Only the address changes (a free port instead of 8000) and the home (a temporary $HOME, so the
default ~/.fedengine is used as a newcomer's would be).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedengine import infra

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).parents[2]


def _newcomer_block() -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme.split("<!-- newcomer-path -->", 1)[1]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


def test_the_readme_newcomer_path_trains_a_model(tmp_path: Path) -> None:
    port = infra.free_port()
    venv = Path(sys.executable).parent.parent
    script = _newcomer_block().replace("localhost:8000", f"127.0.0.1:{port}")
    script = script.replace(".venv/bin/", f"{venv}/bin/")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDENGINE_", "KAFKA_"))}
    env |= {"HOME": str(tmp_path / "home"), "FEDENGINE_GATEWAY_PORT": str(port)}
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        subprocess.run(
            [str(venv / "bin" / "fedengine"), "down"], env=env, cwd=work, capture_output=True
        )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # The rounds page: five rounds, each completed once.
    assert (
        len(re.findall(r'"round_number":\d+,"attempt":\d+,"status":"completed"', done.stdout)) == 5
    )
    model = work / "model.safetensors"
    assert model.exists() and model.stat().st_size > 1000
    assert "fleet lab stopped; 10 device(s) removed" in done.stdout
