"""The supervisor's lock and its standby: a second supervisor that waits to take over.

One supervisor runs a stack: the one holding ``<run>/supervisor.lock`` (an exclusive
``flock``, which the kernel releases when its holder dies, however it dies). Beside it, the
supervisor keeps a standby (``python -m fedengine.standby <run>``, listed in the stack as
``supervisor-standby``) blocked on that lock. When the supervisor is killed, even with
SIGKILL, the standby wakes at once, takes the lock and becomes the supervisor
(``fedengine.supervisor.serve``): it adopts the running processes, counts and logs the death,
and starts a new standby. A standby that dies is restarted by the supervisor like any other
process, so one kill is repaired without anyone; killing both at once is not, but is reported
(the gateway's /ready answers 503 naming the supervisor, ``fedengine status`` says so) and the
next ``fedengine up`` starts a supervisor again.

This module imports the standard library only, so a waiting standby costs a few megabytes;
the supervisor's imports happen once it takes over. It installs no signal handlers while it
waits: SIGTERM (``fedengine down``, through the supervisor) ends it at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path

STANDBY = "supervisor-standby"
MODULE = "fedengine.standby"
# How long a supervisor that finds the lock taken tries again before it gives way: a probe
# (the gateway's /ready, ``fedengine status``) holds it shared for microseconds.
GIVE_WAY_AFTER_S = 1.0


def lock_file(run_dir: Path) -> Path:
    return run_dir / "supervisor.lock"


def stopping_file(run_dir: Path) -> Path:
    """Present while ``fedengine down`` stops the stack: nobody takes it over meanwhile."""
    return run_dir / "stopping"


def take(run_dir: Path, *, wait: bool) -> int | None:
    """Take the supervisor lock for this process's lifetime; return its descriptor.

    ``wait``: block until the holder is gone (the standby). Otherwise try for
    ``GIVE_WAY_AFTER_S`` and return None if another supervisor holds it: two ``fedengine up``
    at once after a supervisor died would each start one, and both would restart the same
    processes, write the state file and carry out every request.
    """
    descriptor = os.open(lock_file(run_dir), os.O_RDWR | os.O_CREAT, 0o600)
    if wait:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        return descriptor
    deadline = time.monotonic() + GIVE_WAY_AFTER_S
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(descriptor)
                return None
            time.sleep(0.05)


def held(run_dir: Path) -> bool:
    """Whether a supervisor holds the stack's lock (it runs), without disturbing it.

    A shared lock is taken and dropped at once; it conflicts with the supervisor's exclusive
    one, so failing to get it means a supervisor holds it.
    """
    try:
        descriptor = os.open(lock_file(run_dir), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(descriptor)  # also drops the shared lock
    return False


def main() -> None:
    run_dir = Path(sys.argv[1])
    descriptor = os.open(lock_file(run_dir), os.O_RDWR | os.O_CREAT, 0o600)
    # Ready: about to wait (``fedengine up`` waits for this before it returns).
    (run_dir / f"{STANDBY}.ready").touch()
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # returns when the supervisor is gone
    from fedengine import supervisor

    supervisor.serve(run_dir, descriptor, as_standby=True)


if __name__ == "__main__":
    main()
