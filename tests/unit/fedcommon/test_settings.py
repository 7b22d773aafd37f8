"""KafkaSettings' security settings: what start-up accepts and the message for what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedcommon.settings import KafkaSettings
from tests.tls_files import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def refusal(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(**fields)  # type: ignore[arg-type]
    return str(caught.value)


def test_the_default_is_plaintext_without_credentials() -> None:
    settings = KafkaSettings()

    assert settings.security_protocol == "PLAINTEXT"
    assert not settings.uses_sasl and not settings.uses_tls
    assert settings.create_topics


def test_the_environment_names_are_the_documented_ones(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "registry",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_SSL_CAFILE": str(tls.ca),
        "KAFKA_SSL_CERTFILE": str(tls.client_cert),
        "KAFKA_SSL_KEYFILE": str(tls.client_key),
        "KAFKA_SSL_PASSWORD": tls.client_key_password,
        "KAFKA_SSL_CHECK_HOSTNAME": "false",
        "KAFKA_CREATE_TOPICS": "false",
    }.items():
        monkeypatch.setenv(name, value)

    settings = KafkaSettings()

    assert settings.security_protocol == "SASL_SSL"
    assert settings.uses_sasl and settings.uses_tls
    assert settings.sasl_mechanism == "SCRAM-SHA-256"
    assert settings.sasl_username == "registry"
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == "s3cret"
    assert (settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile) == (
        tls.ca,
        tls.client_cert,
        tls.client_key,
    )
    assert not settings.ssl_check_hostname
    assert not settings.create_topics
    assert "s3cret" not in repr(settings)
    assert tls.client_key_password not in repr(settings)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_needs_a_username_and_a_password(protocol: str) -> None:
    message = refusal(security_protocol=protocol, sasl_username="registry")

    assert f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and" in message


def test_credentials_without_sasl_are_refused_not_ignored() -> None:
    message = refusal(sasl_username="registry", sasl_password="pw")

    assert "KAFKA_SASL_USERNAME/PASSWORD are set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in message


def test_tls_files_without_tls_are_refused(tls: TlsFiles) -> None:
    message = refusal(
        security_protocol="SASL_PLAINTEXT",
        sasl_username="registry",
        sasl_password="pw",
        ssl_cafile=tls.ca,
    )

    assert "KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT uses no TLS" in message


def test_a_client_certificate_needs_its_key_and_a_password_needs_a_key(tls: TlsFiles) -> None:
    assert "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together" in refusal(
        security_protocol="SSL", ssl_certfile=tls.client_cert
    )
    assert "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together" in refusal(
        security_protocol="SSL", ssl_keyfile=tls.client_key
    )
    assert "KAFKA_SSL_PASSWORD is set but there is no KAFKA_SSL_KEYFILE" in refusal(
        security_protocol="SSL", ssl_password="pw"
    )


def test_tls_files_must_exist_and_be_files(tmp_path: Path) -> None:
    assert f"KAFKA_SSL_CAFILE={tmp_path / 'nope.pem'} is not a file" in refusal(
        security_protocol="SSL", ssl_cafile=tmp_path / "nope.pem"
    )
    assert f"KAFKA_SSL_CAFILE={tmp_path} is not a file" in refusal(
        security_protocol="SSL", ssl_cafile=tmp_path
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sasl_username", "reg\x00istry"),
        ("sasl_password", "pass\x00word"),
        ("sasl_password", "pass\nword"),
        ("ssl_cafile", "/etc/ca\x00.pem"),
    ],
)
def test_nul_and_control_characters_are_refused_without_echoing_the_value(
    field: str, value: str
) -> None:
    fields: dict[str, object] = {
        "security_protocol": "SASL_SSL",
        "sasl_username": "registry",
        "sasl_password": "pw",
        field: value,
    }

    message = refusal(**fields)

    assert f"KAFKA_{field.upper()} must be printable" in message
    assert value not in message and repr(value) not in message


def test_an_empty_variable_counts_as_unset() -> None:
    assert "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in refusal(
        security_protocol="SASL_SSL", sasl_username="", sasl_password=""
    )
    assert KafkaSettings(sasl_username="", sasl_password="").sasl_username is None


@pytest.mark.parametrize(
    ("field", "value"), [("security_protocol", "TLS"), ("sasl_mechanism", "PLAIN")]
)
def test_only_the_supported_protocols_and_mechanisms(field: str, value: str) -> None:
    assert field in refusal(**{field: value})
