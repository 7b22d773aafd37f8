"""What every service process does around its consume loop: signals, readiness, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import start_http_server

logger = logging.getLogger(__name__)


def on_shutdown_signal(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGTERM or SIGINT (graceful stop: finish, commit, exit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


def mark_ready(run_dir: Path | None, service: str) -> None:
    """Write ``<run_dir>/<service>.ready`` so the launcher knows start-up finished."""
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{service}.ready").write_text("ready\n")
    logger.info("%s ready", service)


# How often a running service touches its ready file: its age is the liveness probes' signal.
ALIVE_EVERY_S = 5.0


def touch_ready(run_dir: Path, service: str) -> None:
    """Refresh the ready file's time: the event loop is still turning (a probe reads its age).

    A file removed meanwhile (``fedengine down`` clears them) is not written again, so a
    stopping service never leaves a ready file behind for the next start to trust.
    """
    with contextlib.suppress(FileNotFoundError):
        os.utime(run_dir / f"{service}.ready")


def serve_metrics(port: int, *, host: str = "127.0.0.1") -> None:
    """Expose this process's Prometheus metrics on ``host:port`` (0 disables)."""
    if port:
        start_http_server(port, addr=host)
        logger.info("metrics on http://%s:%d/metrics", host, port)
