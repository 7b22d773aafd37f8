"""Every client fedcommon.kafka builds gets the security settings (client_options), checked on
the constructed aiokafka clients without connecting. A real TLS connection:
tests/integration/test_kafka_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from fedcommon import kafka
from fedcommon.settings import KafkaSettings
from tests.tls_files import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def sasl_ssl(tls: TlsFiles, **fields: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": "kafka.example:9093",
        "security_protocol": "SASL_SSL",
        "sasl_username": "registry",
        "sasl_password": "registry-password",
        "ssl_cafile": tls.ca,
        "ssl_certfile": tls.client_cert,
        "ssl_keyfile": tls.client_key,
        "ssl_password": tls.client_key_password,
    }
    return KafkaSettings(**(values | fields))


def client_config(client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient) -> Any:
    """The aiokafka connection client that holds the options (aiokafka 0.14's attributes)."""
    return client.client if isinstance(client, AIOKafkaProducer) else client._client


def assert_secured(client: Any, tls: TlsFiles) -> None:
    inner = client_config(client)
    assert inner._security_protocol == "SASL_SSL"
    assert inner._sasl_mechanism == "SCRAM-SHA-512"
    assert inner._sasl_plain_username == "registry"
    assert inner._sasl_plain_password == "registry-password"
    context: ssl.SSLContext = inner._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # The CA file is loaded (and only it: no system CAs beside a given CA file).
    (ca,) = context.get_ca_certs()
    assert dict(item[0] for item in ca["subject"])["commonName"] == "fedengine test CA"


def test_client_options_carry_the_sasl_and_tls_settings(tls: TlsFiles) -> None:
    options = kafka.client_options(sasl_ssl(tls))

    assert options["bootstrap_servers"] == "kafka.example:9093"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "registry",
        "registry-password",
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_plaintext_options_name_no_credentials() -> None:
    assert kafka.client_options(KafkaSettings(bootstrap_servers="b:1")) == {
        "bootstrap_servers": "b:1",
        "security_protocol": "PLAINTEXT",
    }


async def test_producer_consumer_and_admin_are_all_built_with_them(tls: TlsFiles) -> None:
    settings = sasl_ssl(tls, topic_prefix="p.")
    producer = kafka.make_producer(settings, client_id="registry")
    consumer = kafka.make_consumer(
        settings, group_id="registry", topic_bases=("fed.devices",), client_id="registry"
    )
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    try:
        for client in (producer, consumer, admin):
            assert_secured(client, tls)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


async def test_create_topics_builds_its_admin_client_from_them(
    tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[AIOKafkaAdminClient] = []

    class Stop(Exception):
        pass

    class Recording(AIOKafkaAdminClient):  # type: ignore[misc]
        async def start(self) -> None:
            built.append(self)
            raise Stop

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", Recording)

    with pytest.raises(Stop):
        await kafka.create_topics(sasl_ssl(tls))

    (admin,) = built
    assert_secured(admin, tls)


async def test_services_leave_topic_creation_to_the_deployment_when_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_admin(**_: Any) -> None:
        raise AssertionError("no admin client when KAFKA_CREATE_TOPICS=false")

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", no_admin)

    assert await kafka.create_topics(KafkaSettings(create_topics=False)) == []


def test_the_name_check_can_be_turned_off_but_not_the_chain_check(tls: TlsFiles) -> None:
    context = kafka.ssl_context(sasl_ssl(tls, ssl_check_hostname=False))

    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_a_wrong_key_password_fails_at_start_up_naming_the_files(tls: TlsFiles) -> None:
    settings = sasl_ssl(tls, ssl_password="not the password")

    with pytest.raises(ValueError, match="cannot use the TLS files") as caught:
        kafka.client_options(settings)

    assert f"KAFKA_SSL_KEYFILE={tls.client_key}" in str(caught.value)
    assert "not the password" not in str(caught.value)


def test_a_ca_file_that_is_no_certificate_fails_at_start_up(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=bogus)

    with pytest.raises(ValueError, match=f"cannot use the TLS files \\(KAFKA_SSL_CAFILE={bogus}"):
        kafka.client_options(settings)


def test_a_key_that_is_not_the_certificates_fails_at_start_up(tls: TlsFiles) -> None:
    settings = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=tls.ca,
        ssl_certfile=tls.client_cert,
        ssl_keyfile=tls.server_key,
    )

    with pytest.raises(ValueError, match="cannot use the TLS files"):
        kafka.client_options(settings)
