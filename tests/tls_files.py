"""A throwaway certificate authority for tests, made with ``cryptography``: a CA, a broker
certificate and a client certificate (its key encrypted with a password), as PEM files."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with ``client_key_password``
    client_key_password: str
    # A server certificate from the same CA for another host (elsewhere.invalid) only.
    misnamed_cert: Path
    misnamed_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_tls_files(
    folder: Path, *, server_dns: tuple[str, ...] = ("localhost",), server_ips: tuple[str, ...] = ()
) -> TlsFiles:
    """Write a CA, a server certificate for ``server_dns``/``server_ips`` and a client
    certificate, all signed by that CA, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(
        "fedengine test CA",
        ca_key,
        issuer=None,
        extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)],
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in server_dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]

    def server_certificate(
        names: list[x509.GeneralName],
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            "broker",
            key,
            issuer=(ca, ca_key),
            extensions=[
                (x509.SubjectAlternativeName(names), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
        )
        return cert, key

    server, server_key = server_certificate(names)
    misnamed, misnamed_key = server_certificate([x509.DNSName("elsewhere.invalid")])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "registry",
        client_key,
        issuer=(ca, ca_key),
        extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    password = "client key password"
    return TlsFiles(
        ca=_write_cert(folder / "ca.pem", ca),
        server_cert=_write_cert(folder / "server.pem", server),
        server_key=_write_key(folder / "server.key", server_key),
        client_cert=_write_cert(folder / "client.pem", client),
        client_key=_write_key(folder / "client.key", client_key, password),
        client_key_password=password,
        misnamed_cert=_write_cert(folder / "misnamed.pem", misnamed),
        misnamed_key=_write_key(folder / "misnamed.key", misnamed_key),
    )
