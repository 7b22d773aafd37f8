"""``--dataset``: the CLI offers exactly the schema's data sets, and the fleet it starts holds the
data set the task trains on."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from fedcommon import enrolment_tokens, signing
from fedcommon.messages.v1 import DatasetName
from fedengine import launcher
from fedengine.cli import app
from fedengine.demo import DatasetChoice
from fedengine_simulator.settings import Settings

POSTGRES = {"DATABASE_URL": "postgresql://unused"}


def test_the_cli_offers_exactly_the_schema_s_data_sets() -> None:
    assert tuple(d.value for d in DatasetChoice) == get_args(DatasetName)


def _token(fleet: str) -> str:
    key = signing.public_key_bytes(signing.generate_private_key())
    return enrolment_tokens.issue(fleet, coordinator_key=key).encode()


@pytest.mark.parametrize("dataset", list(DatasetChoice))
def test_a_fleets_environment_gives_the_simulator_its_data_set(dataset: DatasetChoice) -> None:
    # Prepare
    fleet = launcher.Fleet(name="lab", devices=20, dataset=dataset.value)

    # Execute: the simulator reads SIMULATOR_<FIELD>; the same values, passed by field name.
    values = {
        key.removeprefix("SIMULATOR_").lower(): value
        for key, value in fleet.env(_token("lab")).items()
    }
    values["enrolment_token"] = SecretStr(values["enrolment_token"])
    settings = Settings(postgres=POSTGRES, **values)  # type: ignore[arg-type]

    # Assert
    assert settings.dataset == dataset.value


def test_the_simulator_refuses_a_data_set_it_cannot_load() -> None:
    with pytest.raises(ValidationError, match="dataset"):
        Settings(
            postgres=POSTGRES,  # type: ignore[arg-type]
            fleet="lab",
            enrolment_token=SecretStr(_token("lab")),
            dataset="cifar10",  # type: ignore[arg-type]
        )


def test_the_demo_refuses_an_unknown_data_set_before_starting_anything() -> None:
    result = CliRunner().invoke(app, ["demo", "--dataset", "cifar10"])

    assert result.exit_code == 2
    assert "fashion_mnist" in result.output


def test_the_demo_refuses_more_devices_than_the_data_set_can_hold_before_starting() -> None:
    result = CliRunner().invoke(app, ["demo", "--devices", "1000", "--per-round", "10"])

    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())  # rich wraps it in a box
    assert "1437 training examples: 1000 devices cannot hold 2 each" in said
