from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcommon import mixes
from fedcommon.messages.v1 import DeviceType, PrivacyLevel
from fedengine_simulator.core import fleet, profiles


def test_a_mix_is_parsed_into_shares_that_sum_to_one() -> None:
    mix = mixes.parse_mix("mobile:3, iot:1", DeviceType, "mix")

    assert mix == {DeviceType.MOBILE: 0.75, DeviceType.IOT: 0.25}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("phone:1", "unknown name 'phone'"),
        ("mobile:x", "is not a number"),
        ("mobile:-1", ">= 0"),
        ("mobile:nan", ">= 0"),
        ("mobile:0", "no share"),
        ("", "no share"),
    ],
)
def test_a_bad_mix_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        mixes.parse_mix(text, DeviceType, "mix")


def test_assign_follows_the_mix_exactly() -> None:
    mix = {PrivacyLevel.NONE: 0.7, PrivacyLevel.HIGH: 0.3}
    levels = profiles.assign(mix, 10, np.random.default_rng(0))

    assert levels.count(PrivacyLevel.NONE) == 7 and levels.count(PrivacyLevel.HIGH) == 3


def test_devices_of_a_type_differ_around_its_median() -> None:
    rng = np.random.default_rng(0)
    drawn = [profiles.draw(DeviceType.MOBILE, rng) for _ in range(2000)]
    median = profiles.DEFAULTS[DeviceType.MOBILE].gflops

    speeds = np.array([d.gflops for d in drawn])
    assert 0.9 * median < np.median(speeds) < 1.1 * median
    # Log-normal with sigma 0.6: the fastest tenth is several times the slowest tenth.
    assert np.quantile(speeds, 0.9) / np.quantile(speeds, 0.1) > 3
    assert all(d.has_battery and 50 <= d.initial_battery_pct <= 100 for d in drawn)
    share = sum(d.charges for d in drawn) / len(drawn)
    assert 0.75 < share < 0.85


def test_mains_devices_have_no_battery() -> None:
    rng = np.random.default_rng(0)
    for device_type in (DeviceType.DESKTOP, DeviceType.CLOUD):
        device = profiles.draw(device_type, rng)
        assert not device.has_battery and device.initial_battery_pct == 100


def test_the_same_seed_gives_the_same_fleet_and_a_mix_its_proportions() -> None:
    mix = {DeviceType.MOBILE: 0.6, DeviceType.IOT: 0.4}
    first = fleet.layout("f", 50, types=mix, seed=3)
    again = fleet.layout("f", 50, types=mix, seed=3)
    other = fleet.layout("f", 50, types=mix, seed=4)

    assert first == again
    assert first != other
    assert sum(d.device_type == DeviceType.MOBILE for d in first) == 30
    # What a device enrols with is its own drawn figures.
    assert first[0].capabilities.compute_gflops == pytest.approx(first[0].profile.gflops, 1e-3)


def test_a_privacy_mix_gives_devices_their_levels() -> None:
    devices = fleet.layout(
        "f", 10, privacy_levels={PrivacyLevel.NONE: 0.5, PrivacyLevel.HIGH: 0.5}, seed=0
    )

    assert sum(d.privacy_level == PrivacyLevel.HIGH for d in devices) == 5


def test_an_availability_trace_repeats_over_its_period(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"period_s": 100, "devices": [[[0, 10]], [[50, 100]]]}))
    trace = profiles.AvailabilityTrace.load(path)

    assert trace.available(0, 5) and not trace.available(0, 15) and trace.available(0, 205)
    assert trace.available(1, 60) and not trace.available(1, 10)
    assert trace.available(2, 5)  # device 2 follows the first trace again


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"devices": [[[0, 1]]]}),
        json.dumps({"period_s": 10, "devices": []}),
        json.dumps({"period_s": 10, "devices": [[[5, 2]]]}),
        json.dumps({"period_s": 10, "devices": [[[0, 20]]]}),
        json.dumps({"period_s": "nan", "devices": [[[0, 1]]]}),
    ],
)
def test_a_malformed_trace_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "trace.json"
    path.write_text(content)

    with pytest.raises(ValueError, match="availability trace"):
        profiles.AvailabilityTrace.load(path)
