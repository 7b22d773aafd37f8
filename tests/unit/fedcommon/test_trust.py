"""The trust matrix: who may send what where, checked from headers, signature and sent_at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedcommon import signing, trust
from fedcommon.settings import TrustSettings

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
KEYS = {name: signing.generate_private_key() for name in trust.SERVICES}
VERIFIER = trust.Verifier(
    public_keys={name: signing.public_key_bytes(key) for name, key in KEYS.items()},
    prefix="p.",
    window=timedelta(days=1),
)
TOPIC = "p.fed.tasks"


def refusal(
    headers: list[tuple[str, bytes]],
    *,
    kind: str = "task.start_requested",
    topic: str = TOPIC,
    sent_at: datetime = NOW,
) -> str | None:
    return VERIFIER.refusal(
        topic=topic,
        key=b"k",
        value=b"v",
        headers=headers,
        message_type=kind,
        sent_at=sent_at,
        now=NOW,
    )


def signed(name: str, topic: str = TOPIC, value: bytes = b"v") -> list[tuple[str, bytes]]:
    return trust.Signer(name, KEYS[name]).headers(topic, b"k", value)


def test_the_right_service_with_its_own_key_is_believed() -> None:
    assert refusal(signed("gateway")) is None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "must be signed by gateway"),
        (signed("coordinator"), "'coordinator' may not send"),
        (trust.Signer("gateway", signing.generate_private_key()).headers(TOPIC, b"k", b"v"), "bad"),
        (signed("gateway", value=b"another value"), "bad signature"),
        (signed("gateway", topic="p.fed.devices"), "bad signature"),  # moved to another topic
        ([(trust.SIGNER_HEADER, b"mallory")], "'mallory' may not send"),
    ],
    ids=["unsigned", "wrong-service", "device-key", "other-value", "other-topic", "unknown"],
)
def test_forgeries_are_refused_with_a_reason(headers: list[tuple[str, bytes]], reason: str) -> None:
    assert reason in (refusal(headers) or "")


@pytest.mark.parametrize(
    "sent_at", [NOW - timedelta(days=2), NOW + timedelta(hours=1)], ids=["old", "future"]
)
def test_a_signed_message_outside_the_window_is_a_replay(sent_at: datetime) -> None:
    assert "replay window" in (refusal(signed("gateway"), sent_at=sent_at) or "")


def test_device_messages_pass_to_their_handler_and_unknown_pairs_are_refused() -> None:
    assert refusal([], kind="update.submitted", topic="p.fed.updates") is None
    assert "nobody may send" in (refusal(signed("gateway"), kind="update.submitted") or "")


def test_settings_refuse_a_key_that_is_not_the_services_own() -> None:
    public = {name: signing.public_key_bytes(key).hex() for name, key in KEYS.items()}
    own = signing.private_key_to_bytes(KEYS["registry"]).hex()
    settings = TrustSettings(FEDENGINE_SERVICE_KEY=own, FEDENGINE_SERVICE_KEYS=public)

    assert settings.signer("registry").name == "registry"
    with pytest.raises(ValueError, match="not coordinator's key"):
        settings.signer("coordinator")
    with pytest.raises(ValueError, match="not set"):
        TrustSettings(FEDENGINE_SERVICE_KEYS=public).signer("registry")


IDENTITY = bytes([1]) + bytes(31)


def test_a_small_order_service_key_believes_nothing_and_fails_start_up() -> None:
    # R = identity, S = 0 "verifies" any message under the identity key (in OpenSSL): a
    # verifier configured with it must still refuse, and settings refuse to start with it.
    weak = trust.Verifier(public_keys={"gateway": IDENTITY}, prefix="p.", window=timedelta(days=1))
    forged = [(trust.SIGNER_HEADER, b"gateway"), (trust.SIGNATURE_HEADER, IDENTITY + bytes(32))]
    reason = weak.refusal(
        topic=TOPIC,
        key=b"k",
        value=b"v",
        headers=forged,
        message_type="task.start_requested",
        sent_at=NOW,
        now=NOW,
    )
    assert reason == "bad signature for 'gateway'"
    public = {name: signing.public_key_bytes(key).hex() for name, key in KEYS.items()}
    for bad in (IDENTITY.hex(), "00" * 32):
        with pytest.raises(ValueError, match=r"FEDENGINE_SERVICE_KEYS\[gateway\] is .*small order"):
            TrustSettings(FEDENGINE_SERVICE_KEYS={**public, "gateway": bad})


def test_a_signature_with_s_past_l_is_refused() -> None:
    (name, signer), (_, signature) = signed("gateway")
    s = int.from_bytes(signature[32:], "little") + 2**252 + 27742317777372353535851937790883648493
    malleated = signature[:32] + s.to_bytes(32, "little")
    assert refusal([(name, signer), (trust.SIGNATURE_HEADER, malleated)]) == (
        "bad signature for 'gateway'"
    )


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(trust.SIGNER_HEADER, None)], "must be signed by gateway"),
        ([(trust.SIGNER_HEADER, b"gateway"), (trust.SIGNATURE_HEADER, None)], "bad signature"),
        ([(trust.SIGNER_HEADER, None), (trust.SIGNATURE_HEADER, None)], "must be signed"),
    ],
    ids=["null-signer", "null-signature", "both-null"],
)
def test_a_header_with_no_value_is_no_signature_never_a_crash(
    headers: list[tuple[str, bytes | None]], reason: str
) -> None:
    """Kafka allows a header without a value, and aiokafka delivers it as None: found by a
    review, it crashed every consumer before its handler (and the record came back forever)."""
    found = refusal(headers)  # type: ignore[arg-type]
    assert found is not None and reason in found


def test_a_null_signer_on_a_device_message_leaves_the_check_to_its_handler() -> None:
    assert (
        VERIFIER.refusal(
            topic="p.fed.updates",
            key=b"k",
            value=b"v",
            headers=[(trust.SIGNER_HEADER, None)],  # type: ignore[list-item]
            message_type="update.submitted",
            sent_at=NOW,
            now=NOW,
        )
        is None
    )
