"""Issue 16's cross-silo bar: four device processes of the heart-disease example (one per
hospital, each on its own data) train an uploaded model against a running stack, judged by
federated evaluation alone; the result is within 3 points of a plain centralised training of
the same model on the pooled data, and round by round the platform computes exactly what the
example's in-process FedAvg computes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.integration.test_device_runtime import Devices

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "heart-disease"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from heart_disease import centralised, simulate  # noqa: E402
from heart_disease.client import HeartClient  # noqa: E402
from heart_disease.data import HOSPITALS, hospital_split, load  # noqa: E402
from heart_disease.hyperparameters import CHOSEN  # noqa: E402
from heart_disease.run_task import run_task  # noqa: E402


@pytest.fixture
def hospitals(stack: Stack, tmp_path: Path) -> Iterator[Devices]:
    running = Devices(stack, tmp_path)
    try:
        for hospital in HOSPITALS:
            running.start(
                simulate.device_id(hospital),
                "heart_disease.client:app",
                f"hospital={hospital}",
                app_path=EXAMPLE,
            )
        yield running
    finally:
        running.stop_all()


async def test_four_hospitals_match_centralised_training_within_three_points(
    stack: Stack, hospitals: Devices
) -> None:
    ids = [simulate.device_id(h) for h in HOSPITALS]
    rounds: list[dict[str, object]] = []
    async with stack.client() as client:
        outcome = await run_task(client, devices=ids, timeout_s=300, report=rounds.append)

    assert outcome["state"] == "completed" and outcome["stop_reason"] == "max_rounds", outcome
    assert len(rounds) == CHOSEN.rounds
    test_rows = sum(len(hospital_split(load(), h).y_test) for h in HOSPITALS)
    for row in rounds:
        # Every hospital evaluated every version, on all of its held-out patients.
        assert row["fed_devices"] == 4 and row["fed_examples"] == test_rows, row
    pooled = centralised.train(
        epochs=CHOSEN.rounds * CHOSEN.local_epochs,
        learning_rate=CHOSEN.learning_rate,
        batch_size=CHOSEN.batch_size,
        seed=CHOSEN.seed,
    )
    federated = outcome["accuracy"]
    print(json.dumps({"rounds": rounds, "centralised": pooled, "federated": federated}))
    assert isinstance(federated, float)
    assert abs(federated - pooled["accuracy"]) <= 0.03, (federated, pooled)
    # The platform's rounds are the example's plain FedAvg loop, to float32 rounding: the
    # devices' seeds follow from the task's, so nothing but the transport differs.
    table = load()
    clients = {
        h: HeartClient(hospital_split(table, h), batch_size=CHOSEN.batch_size) for h in HOSPITALS
    }
    expected = simulate.run(CHOSEN, clients)
    assert [r["fed_accuracy"] for r in rounds] == pytest.approx(
        [e["accuracy"] for e in expected], abs=1e-6
    )
    for device_id in ids:
        log = hospitals.log(device_id)
        assert "sent an update" in log and "sent an evaluation" in log
