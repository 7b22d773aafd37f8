from __future__ import annotations

from pathlib import Path

import pytest

from feddevice import command


def test_identity_prints_the_key_and_a_proof_the_gateway_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcommon import signing

    assert command.main(["identity", "--state-dir", str(tmp_path), "--device-id", "d-1"]) == 0
    lines = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert lines["device_id"] == "d-1"
    signing.verify(
        public_key=bytes.fromhex(lines["public_key"]),
        signature=bytes.fromhex(lines["possession_signature"]),
        payload=signing.possession_payload(
            device_id="d-1", public_key=bytes.fromhex(lines["public_key"])
        ),
    )


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--app", "nocolon"], "expected module:attribute"),
        (["--app", "a:b", "--set", "novalue"], "expected KEY=VALUE"),
        (["--app", "tests.integration.device_apps:raising"], "coordinator's public key"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], says: str
) -> None:
    base = ["run", "--state-dir", str(tmp_path), "--gateway", "http://127.0.0.1:1"]
    try:
        code = command.main([*base, *arguments])
    except SystemExit as exit_:
        code = 2 if exit_.code else 0
        assert says in str(exit_.code)
    else:
        assert says in capsys.readouterr().err
    assert code == 2
