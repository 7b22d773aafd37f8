"""``fedengine up`` refuses at once a gateway port something already listens on (another
stack's gateway would answer this one's readiness probes)."""

from __future__ import annotations

import socket

import pytest

from fedengine.launcher import check_port_free


def test_a_port_with_a_listener_is_refused_naming_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port_free("127.0.0.1", port)


def test_a_free_port_passes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    check_port_free("127.0.0.1", port)
