"""`fedengine demo` run as a user runs it: a subprocess of the installed command, on a stack of
its own (nothing running in its home) or on the session's running stack (`fedengine up` first,
then the demo starts only its fleet, and stops only that).

A demo on a stack of its own pays for the whole start-up (broker, PostgreSQL, every service);
one test does that (test_demo_cli). The others share the session's stack, and may run at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedengine import infra
from tests.integration.conftest import Stack

# What the test process may have inherited that would point a demo elsewhere.
_INHERITED = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "KAFKA_TOPIC_PREFIX")


def own_stack_environment(tmp_path: Path) -> dict[str, str]:
    """A home with nothing running in it and a free gateway port: the demo starts everything."""
    env = {
        **os.environ,
        "FEDENGINE_HOME": str(tmp_path / "home"),
        "FEDENGINE_GATEWAY_PORT": str(infra.free_port()),
    }
    for inherited in _INHERITED:
        env.pop(inherited, None)
    return env


def running_stack_environment(stack: Stack) -> dict[str, str]:
    """The session stack's home: the demo finds the stack running there and uses it."""
    env = {**os.environ, "FEDENGINE_HOME": str(stack.settings.home)}
    for inherited in (*_INHERITED, "FEDENGINE_GATEWAY_PORT"):
        env.pop(inherited, None)
    return env


def command(*flags: str, out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "fedengine"), "demo", *flags, "--json", str(out)]


class Demo:
    """One `fedengine demo` started in the background; ``result`` waits for it."""

    def __init__(self, env: dict[str, str], folder: Path, *flags: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "out.json"
        self.log = folder / "demo.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command(*flags, out=self.out),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def result(self, *, timeout_s: float) -> tuple[str, dict[str, Any]]:
        """Wait for the demo; return its output and its --json document (it must exit 0)."""
        try:
            returncode = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        output = self.log.read_text(errors="replace")
        assert returncode == 0, output[-6000:]
        document: dict[str, Any] = json.loads(self.out.read_text())
        return output, document

    def stop(self) -> None:
        """SIGINT (the demo then stops its fleet, as on Ctrl-C), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
