"""A liveness and readiness probe for container platforms: ``python -m fedcommon.probe FILE``.

A service writes ``<FEDENGINE_RUN_DIR>/<service>.ready`` once it consumes, and its event loop
touches it every few seconds (``fedcommon.runtime``). The probe passes while the file exists and
is younger than ``--max-age-s``: a service that has not started yet fails readiness, one whose
event loop is stuck fails liveness and is restarted. Exit 0 passes, 1 fails, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def check(path: Path, *, max_age_s: float, now: float | None = None) -> str | None:
    """Return why the probe fails, or None when it passes."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return f"{path} does not exist: not ready (yet)"
    if age > max_age_s:
        return f"{path} is {age:.0f} s old (more than {max_age_s:.0f} s): the service is stuck"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcommon.probe")
    parser.add_argument("file", type=Path, help="the service's ready file")
    parser.add_argument("--max-age-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    reason = check(args.file, max_age_s=args.max_age_s)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
