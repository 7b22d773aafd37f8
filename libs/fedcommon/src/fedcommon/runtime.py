"""What every service process does around its consume loop: signals, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging
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


def serve_metrics(port: int, *, host: str = "127.0.0.1") -> None:
    """Expose this process's Prometheus metrics on ``host:port`` (0 disables)."""
    if port:
        start_http_server(port, addr=host)
        logger.info("metrics on http://%s:%d/metrics", host, port)
