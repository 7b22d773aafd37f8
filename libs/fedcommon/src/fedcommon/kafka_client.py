"""The connection options every Kafka client gets, devices' included.

Kept apart from fedcommon.kafka (the services' consume loop, metrics and dead letters) so that
the device runtime connects with exactly the services' security settings without importing
any of the services' dependencies.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from fedcommon.settings import KafkaSettings


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The connection options every Kafka client gets: where the broker is, and the security
    protocol, SASL credentials and TLS context of ``settings``.

    Every producer, consumer and admin client is built with these (make_producer,
    make_consumer, create_topics), so that no client connects with less. Raises ValueError
    naming the setting when a TLS file cannot be used (a service fails at start-up).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.uses_sasl:
        if settings.sasl_username is None or settings.sasl_password is None:
            raise ValueError("SASL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if settings.uses_tls:
        options["ssl_context"] = ssl_context(settings)
    return options


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of ``settings``: the broker verified against KAFKA_SSL_CAFILE (or the
    system's CAs), with the name check unless turned off, and a client certificate if given."""
    password = settings.ssl_password.get_secret_value() if settings.ssl_password else None
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
            password=password,
        )
    except (ssl.SSLError, OSError) as exc:
        files = ", ".join(
            f"{name}={path}"
            for name, path in (
                ("KAFKA_SSL_CAFILE", settings.ssl_cafile),
                ("KAFKA_SSL_CERTFILE", settings.ssl_certfile),
                ("KAFKA_SSL_KEYFILE", settings.ssl_keyfile),
            )
            if path is not None
        )
        raise ValueError(f"cannot use the TLS files ({files or 'system CAs'}): {exc}") from exc
    context.check_hostname = settings.ssl_check_hostname
    return context
