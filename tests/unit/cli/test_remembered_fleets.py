"""The fleets ``fedengine up`` brings back: remembered when started, forgotten when stopped on
purpose, with every option they started with."""

from __future__ import annotations

import stat
from pathlib import Path

from fedengine import remembered_fleets
from fedengine.launcher import Fleet, fleets_to_start
from fedengine.settings import LauncherSettings


def _settings(home: Path) -> LauncherSettings:
    return LauncherSettings(FEDENGINE_HOME=home)


def test_a_started_fleet_comes_back_with_its_options_until_it_is_stopped(tmp_path: Path) -> None:
    # Prepare
    settings = _settings(tmp_path)
    lab = Fleet(name="lab", devices=10, partitioning="dirichlet", alpha=0.3, seed=7)
    attackers = Fleet(name="bad", devices=4, malicious=0.5, attack="gaussian", attack_scale=2.0)

    # Execute
    remembered_fleets.remember(settings, lab.options())
    remembered_fleets.remember(settings, attackers.options())
    back = [Fleet.from_options(o) for o in remembered_fleets.remembered(settings)]

    # Assert: the same fleets, in the order started; the file is the owner's only.
    assert back == [lab, attackers]
    mode = stat.S_IMODE(remembered_fleets.fleets_file(settings).stat().st_mode)
    assert mode == 0o600

    # Execute / Assert: stopped on purpose, it is forgotten; forgetting twice says so.
    assert remembered_fleets.forget(settings, "lab")
    assert not remembered_fleets.forget(settings, "lab")
    assert [o["name"] for o in remembered_fleets.remembered(settings)] == ["bad"]


def test_a_fleet_started_again_keeps_its_place_with_its_new_options(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    remembered_fleets.remember(settings, Fleet(name="a", devices=2).options())
    remembered_fleets.remember(settings, Fleet(name="b", devices=3).options())

    remembered_fleets.remember(settings, Fleet(name="a", devices=5).options())

    back = [Fleet.from_options(o) for o in remembered_fleets.remembered(settings)]
    assert [(f.name, f.devices) for f in back] == [("a", 5), ("b", 3)]


def test_nothing_is_remembered_in_a_new_home(tmp_path: Path) -> None:
    assert remembered_fleets.remembered(_settings(tmp_path / "new")) == []


def test_options_a_later_version_added_are_ignored() -> None:
    options = {**Fleet(name="lab", devices=3).options(), "battery_model": "li-ion"}

    assert Fleet.from_options(options) == Fleet(name="lab", devices=3)


def test_a_fleet_up_is_asked_for_wins_over_the_remembered_one_of_that_name() -> None:
    asked = [Fleet(name="lab", devices=8, seed=1)]
    remembered = [Fleet(name="lab", devices=8, seed=5), Fleet(name="other", devices=2)]

    required, returning = fleets_to_start(asked, remembered)

    assert required == asked and returning == [Fleet(name="other", devices=2)]
