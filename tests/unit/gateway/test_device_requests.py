"""The pure checks of a device's signed request headers: format, range and time window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcommon.constraints import INT64_MAX
from fedengine_gateway.device_requests import (
    DeviceRequest,
    DeviceRequestRefused,
    MalformedHeader,
    OutsideWindow,
    check_headers,
)

NOW_US = 1_800_000_000_000_000
SIGNATURE = bytes(range(64))
WINDOW_S = 300.0


def _check(
    sent_at: str | None = str(NOW_US), signature: str | None = SIGNATURE.hex()
) -> DeviceRequest:
    return check_headers(sent_at=sent_at, signature=signature, now_us=NOW_US, window_s=WINDOW_S)


def test_good_headers_give_the_send_time_and_the_signature_bytes() -> None:
    # Execute
    request = check_headers(
        sent_at=str(NOW_US - 12), signature=SIGNATURE.hex().upper(), now_us=NOW_US, window_s=300
    )

    # Assert
    assert (request.sent_at_us, request.signature) == (NOW_US - 12, SIGNATURE)


@pytest.mark.parametrize(
    ("sent_at", "signature", "header", "reason"),
    [
        (None, SIGNATURE.hex(), "X-Device-Sent-At", "missing header"),
        (str(NOW_US), None, "X-Device-Signature", "missing header"),
        (None, None, "X-Device-Sent-At", "missing header"),
        ("", SIGNATURE.hex(), "X-Device-Sent-At", "integer count of microseconds"),
        ("1.8e15", SIGNATURE.hex(), "X-Device-Sent-At", "integer count of microseconds"),
        ("-1", SIGNATURE.hex(), "X-Device-Sent-At", "integer count of microseconds"),
        ("+1800000000000000", SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),
        (" 1800000000000000", SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),
        ("1800000000000000\n", SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),
        ("1_800_000_000_000_000", SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),
        ("١٢٣", SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),  # Arabic-Indic digits
        ("18000\x0000", SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),
        (str(2**64), SIGNATURE.hex(), "X-Device-Sent-At", f"from 0 to {INT64_MAX}"),
        (str(INT64_MAX + 1), SIGNATURE.hex(), "X-Device-Sent-At", f"from 0 to {INT64_MAX}"),
        ("9" * 10_000, SIGNATURE.hex(), "X-Device-Sent-At", "integer count"),
        (str(NOW_US), "", "X-Device-Signature", "exactly 128 hex characters"),
        (str(NOW_US), SIGNATURE.hex()[:-2], "X-Device-Signature", "exactly 128 hex characters"),
        (str(NOW_US), SIGNATURE.hex() + "00", "X-Device-Signature", "exactly 128 hex"),
        (str(NOW_US), "g" * 128, "X-Device-Signature", "exactly 128 hex characters"),
        (str(NOW_US), SIGNATURE.hex()[:-1] + "\x00", "X-Device-Signature", "exactly 128 hex"),
        (str(NOW_US), SIGNATURE.hex() + "\n", "X-Device-Signature", "exactly 128 hex"),
    ],
)
def test_a_missing_or_malformed_header_is_refused_naming_it(
    sent_at: str | None, signature: str | None, header: str, reason: str
) -> None:
    # Execute
    with pytest.raises(MalformedHeader) as refused:
        _check(sent_at, signature)

    # Assert: the message names the header and what is wrong with it.
    assert header in str(refused.value)
    assert reason in str(refused.value)


@pytest.mark.parametrize("skew_s", [-300, 0, 300])
def test_a_send_time_up_to_the_window_either_way_is_accepted(skew_s: int) -> None:
    # Execute
    request = _check(str(NOW_US + skew_s * 1_000_000))

    # Assert
    assert request.sent_at_us == NOW_US + skew_s * 1_000_000


@pytest.mark.parametrize(
    ("sent_at_us", "words"),
    [
        (NOW_US - 300_000_001, "300.0 s behind"),
        (NOW_US + 300_000_001, "300.0 s ahead of"),
        (NOW_US - 3_600_000_000, "3600.0 s behind"),
        (0, "s behind"),
        (INT64_MAX, "s ahead of"),
    ],
)
def test_a_send_time_past_the_window_is_refused_saying_so(sent_at_us: int, words: str) -> None:
    # Execute
    with pytest.raises(OutsideWindow) as refused:
        _check(str(sent_at_us))

    # Assert
    message = str(refused.value)
    assert message.startswith("the request time is outside the window")
    assert words in message
    assert "at most 300 s either way" in message


def test_the_window_is_the_callers_setting() -> None:
    # Execute / Assert: 10 s late passes a 30 s window and fails a 5 s one.
    late = str(NOW_US - 10_000_000)
    check_headers(sent_at=late, signature=SIGNATURE.hex(), now_us=NOW_US, window_s=30)
    with pytest.raises(OutsideWindow):
        check_headers(sent_at=late, signature=SIGNATURE.hex(), now_us=NOW_US, window_s=5)


@given(
    sent_at=st.one_of(
        st.text(max_size=40),
        st.integers(min_value=NOW_US - 400_000_000, max_value=NOW_US + 400_000_000).map(str),
    ),
    signature=st.one_of(st.text(max_size=140), st.binary(min_size=63, max_size=65).map(bytes.hex)),
)
def test_any_text_is_either_accepted_or_refused_and_nothing_else(
    sent_at: str, signature: str
) -> None:
    # Execute
    try:
        request = _check(sent_at, signature)
    except DeviceRequestRefused:
        return  # refused with a message: a 401, never a 500

    # Assert: what passes is ASCII digits within the window and a 64-byte signature.
    assert sent_at.isascii() and sent_at.isdigit()
    assert abs(request.sent_at_us - NOW_US) <= WINDOW_S * 1_000_000
    assert len(request.signature) == 64


@given(sent_at_us=st.integers(min_value=0, max_value=INT64_MAX))
def test_every_in_range_send_time_parses_and_is_judged_by_the_window_alone(
    sent_at_us: int,
) -> None:
    # Execute
    try:
        request = check_headers(
            sent_at=str(sent_at_us), signature=SIGNATURE.hex(), now_us=NOW_US, window_s=WINDOW_S
        )
    except OutsideWindow:
        # Assert: refused only when it lies outside the window.
        assert abs(sent_at_us - NOW_US) > WINDOW_S * 1_000_000
        return
    assert request.sent_at_us == sent_at_us
    assert abs(sent_at_us - NOW_US) <= WINDOW_S * 1_000_000
