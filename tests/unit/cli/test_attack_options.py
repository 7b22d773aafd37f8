"""``--malicious / --attack / --attack-scale``: what the CLI hands the simulator it starts is what
the simulator's settings take, and bad values are refused before any stack starts."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from fedcommon import enrolment_tokens, signing
from fedengine import launcher
from fedengine.cli import app
from fedengine.demo import AttackKind
from fedengine_simulator.core.attacks import Attack
from fedengine_simulator.core.attacks import AttackKind as SimulatorAttackKind
from fedengine_simulator.settings import Settings


def test_the_cli_offers_exactly_the_simulators_attacks() -> None:
    assert [k.value for k in AttackKind] == [k.value for k in SimulatorAttackKind]


@pytest.mark.parametrize("kind", list(AttackKind))
def test_a_fleets_environment_gives_the_simulator_its_attack(kind: AttackKind) -> None:
    # Prepare
    fleet = launcher.Fleet(
        name="lab", devices=20, seed=3, malicious=0.2, attack=kind.value, attack_scale=4.0
    )
    token = enrolment_tokens.issue(
        "lab", coordinator_key=signing.public_key_bytes(signing.generate_private_key())
    ).encode()

    # Execute: the simulator reads SIMULATOR_<FIELD>; the same values, passed by field name.
    env = fleet.env(token)
    values = {key.removeprefix("SIMULATOR_").lower(): value for key, value in env.items()}
    values["enrolment_token"] = SecretStr(values["enrolment_token"])
    settings = Settings(postgres={"DATABASE_URL": "postgresql://unused"}, **values)  # type: ignore[arg-type]

    # Assert
    assert settings.malicious == 0.2 and settings.seed == 3 and settings.devices == 20
    assert settings.attack_spec == Attack(SimulatorAttackKind(kind.value), 4.0)


def test_an_honest_fleet_has_no_attackers() -> None:
    env = launcher.Fleet(name="lab", devices=5).env("token")

    assert env["SIMULATOR_MALICIOUS"] == "0.0"


@pytest.mark.parametrize(
    "flags",
    [
        ["--malicious", "1.5"],
        ["--malicious", "-0.1"],
        ["--attack", "backdoor"],
        ["--attack-scale", "0"],
        ["--attack-scale", "inf"],
        ["--attack-scale", "2e9"],
    ],
)
@pytest.mark.parametrize("command", [["demo"], ["fleet"]])
def test_bad_attack_options_are_refused_before_anything_starts(
    command: list[str], flags: list[str]
) -> None:
    # Execute
    result = CliRunner().invoke(app, [*command, *flags])

    # Assert: a usage error (exit code 2), not a started stack or fleet.
    assert result.exit_code == 2, result.output
