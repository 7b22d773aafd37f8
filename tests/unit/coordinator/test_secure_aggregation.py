"""A secure task's tries (core/secure_aggregation.py): round.opened's SecAgg+ parameters, each
train.requested's index and neighbours, the DP variant, and the deadlines, as table rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from fedcommon.messages.v1 import (
    RoundOpened,
    RoundSecAgg,
    TaskSpec,
    TrainRequested,
)
from fedengine_coordinator.core import secure_aggregation
from fedengine_coordinator.core.effects import ApproveRound, Effect, Emit, InsertRound
from fedengine_coordinator.core.events import SpendApproved
from fedengine_coordinator.core.machine import decide
from fedengine_coordinator.core.state import State
from fedengine_coordinator.executor import draw_graph_seed
from tests.unit.coordinator.test_machine import NOW, SHA, offered, spec, task
from tests.unit.coordinator.test_privacy_stage import BUDGET, approval, awaiting

SEED = bytes(range(32))
SHAPES = [[2, 2], [2]]  # offered()'s model: 6 coordinates
ROUND_TIMEOUT = timedelta(seconds=60)  # test_machine.spec()'s round_timeout_s


def _opened(effects: list[Effect]) -> RoundOpened:
    (opened,) = [
        e.message for e in effects if isinstance(e, Emit) and isinstance(e.message, RoundOpened)
    ]
    return opened


def _requests(effects: list[Effect]) -> list[TrainRequested]:
    return [
        e.message for e in effects if isinstance(e, Emit) and isinstance(e.message, TrainRequested)
    ]


def _inserted(effects: list[Effect]) -> InsertRound:
    (inserted,) = [e for e in effects if isinstance(e, InsertRound)]
    return inserted


def _check_consistent(opened: RoundOpened, requests: list[TrainRequested]) -> RoundSecAgg:
    """Every device's assignment agrees with round.opened and with the others'."""
    section = opened.secure_aggregation
    assert section is not None
    n = len(opened.participants)
    order = [p.device_id for p in opened.participants]
    assert sorted(r.device_id for r in requests) == sorted(order)
    graph: dict[int, set[int]] = {}
    for request in requests:
        assignment = request.secure_aggregation
        assert assignment is not None
        assert assignment.round == section
        assert assignment.num_clients == n
        assert assignment.dim == 6
        # Index: the device's position in round.opened's list (the aggregator's order).
        assert order[assignment.index] == request.device_id
        indices = [peer.index for peer in assignment.neighbours]
        assert len(indices) == section.degree and assignment.index not in indices
        assert indices == sorted(set(indices))
        for peer in assignment.neighbours:
            assert opened.participants[peer.index].device_id == peer.device_id
            assert opened.participants[peer.index].public_key == peer.public_key
        graph[assignment.index] = set(indices)
    # The graph is undirected: i is j's neighbour exactly when j is i's.
    assert all(i in graph[j] for i, row in graph.items() for j in row)
    # A majority of each device's neighbours rebuilds its secrets, never fewer.
    assert section.degree // 2 < section.threshold <= section.degree
    return section


def _secure_task(devices: int, **section: Any):  # type: ignore[no-untyped-def]
    return task(devices_per_round=devices, min_devices=3, secure_aggregation=section)


# (secure_aggregation section, devices) -> (degree, threshold)
PLAIN_CASES = [
    pytest.param({}, 3, 2, 2, id="defaults-3-devices-complete-graph"),
    pytest.param({}, 10, 9, 5, id="defaults-10-devices-3log2n-capped-at-n-1"),
    pytest.param({}, 20, 14, 8, id="defaults-20-devices-3log2n-even"),
    pytest.param({"neighbours": 4}, 10, 4, 3, id="neighbours-4-majority-threshold"),
    pytest.param({"neighbours": 4, "threshold": 4}, 10, 4, 4, id="threshold-all-neighbours"),
    pytest.param({"threshold": 2}, 20, 14, 8, id="threshold-below-majority-raised"),
    pytest.param({"threshold": 30}, 20, 14, 14, id="threshold-above-degree-lowered"),
    pytest.param({"neighbours": 8}, 5, 4, 3, id="neighbours-above-n-1-complete-graph"),
]


@pytest.mark.parametrize(("section", "devices", "degree", "threshold"), PLAIN_CASES)
def test_a_secure_try_carries_consistent_parameters_to_everyone(
    section: dict[str, Any], devices: int, degree: int, threshold: int
) -> None:
    # Prepare
    state = State(_secure_task(devices, **section))
    event = replace(offered(*[80.0] * devices), graph_seed=SEED)

    # Execute
    _, effects = decide(state, event)

    # Assert
    opened = _opened(effects)
    assert len(opened.participants) == devices
    secure = _check_consistent(opened, _requests(effects))
    assert (secure.degree, secure.threshold) == (degree, threshold)
    spec_section = state.task.spec.secure_aggregation  # type: ignore[union-attr]
    assert spec_section is not None
    assert secure == RoundSecAgg(
        bits=spec_section.bits,
        clip_norm=spec_section.clip_norm,
        weight_cap=spec_section.weight_cap,
        degree=degree,
        threshold=threshold,
        graph_seed=SEED,
        stage_timeout_s=spec_section.stage_timeout_s,
        clip_bit=False,
    )


def test_the_task_sections_settings_travel_as_given() -> None:
    # Prepare
    state = State(_secure_task(4, bits=8, clip_norm=2.5, weight_cap=200, stage_timeout_s=12.0))
    event = replace(offered(80, 80, 80, 80), graph_seed=SEED)

    # Execute
    _, effects = decide(state, event)

    # Assert
    secure = _opened(effects).secure_aggregation
    assert secure is not None
    assert (secure.bits, secure.clip_norm, secure.weight_cap, secure.stage_timeout_s) == (
        8,
        2.5,
        200,
        12.0,
    )


def test_another_seed_gives_another_graph() -> None:
    # Prepare
    state = State(_secure_task(20, neighbours=4))
    graphs = []

    # Execute
    for seed in (SEED, bytes(32)):
        _, effects = decide(state, replace(offered(*[80.0] * 20), graph_seed=seed))
        graphs.append(
            {
                r.device_id: [p.index for p in r.secure_aggregation.neighbours]  # type: ignore[union-attr]
                for r in _requests(effects)
            }
        )

    # Assert
    assert graphs[0] != graphs[1]


def test_a_task_without_secure_aggregation_gets_no_section() -> None:
    # Execute: a seed handed in by mistake changes nothing.
    _, effects = decide(State(task()), replace(offered(80, 80), graph_seed=SEED))

    # Assert
    assert _opened(effects).secure_aggregation is None
    requests = _requests(effects)
    assert len(requests) == 2
    assert all(r.secure_aggregation is None for r in requests)


def test_a_secure_try_without_a_seed_is_a_shell_bug() -> None:
    with pytest.raises(ValueError, match="graph_seed must be 32 random bytes"):
        decide(State(_secure_task(3)), offered(80, 80, 80))


# --- deadlines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "train", "whole"),
    [
        pytest.param(None, 60, 60, id="plain-task-one-deadline"),
        pytest.param({}, 60, 60 + 4 * 30, id="secure-default-stage-timeout"),
        pytest.param({"stage_timeout_s": 5.0}, 60, 80, id="secure-short-stages"),
    ],
)
def test_deadlines(section: dict[str, Any] | None, train: float, whole: float) -> None:
    # Prepare
    fields: dict[str, object] = {} if section is None else {"secure_aggregation": section}
    task_spec: TaskSpec = spec(min_devices=3, devices_per_round=3, **fields)

    # Execute
    due = secure_aggregation.deadlines(task_spec, now=NOW)

    # Assert
    assert due.train == NOW + timedelta(seconds=train)
    assert due.round == NOW + timedelta(seconds=whole)


def test_a_secure_tries_stored_deadline_covers_its_later_stages() -> None:
    # Execute
    _, effects = decide(
        State(_secure_task(3, stage_timeout_s=10.0)), replace(offered(80, 80, 80), graph_seed=SEED)
    )

    # Assert: devices and the aggregator are due after the first stage; the lost-round check
    # waits for all four.
    assert _inserted(effects).round.deadline == NOW + ROUND_TIMEOUT + timedelta(seconds=40)
    assert _opened(effects).deadline == NOW + ROUND_TIMEOUT
    assert {r.deadline for r in _requests(effects)} == {NOW + ROUND_TIMEOUT}


# --- DP tries ------------------------------------------------------------------------------

KEYS = {f"d{i}": bytes([i]) * 32 for i in range(5)}
ADAPTIVE = {"update_noise_multiplier": 5.2, "count_noise_std": 20.0}


def _dp_secure(participants: int, **approval_fields: object) -> tuple[State, SpendApproved]:
    dp = task(
        devices_per_round=5,
        min_devices=3,
        privacy=BUDGET,
        secure_aggregation={"stage_timeout_s": 10.0},
    )
    waiting = replace(awaiting(), participants=tuple(f"d{i}" for i in range(participants)))
    event = SpendApproved(
        approval(clip_norm=2.5, **approval_fields), KEYS, SHA, SHAPES, NOW, graph_seed=SEED
    )
    return State(dp, waiting), event


@pytest.mark.parametrize(
    ("approval_fields", "clip_bit"),
    [
        pytest.param({}, False, id="fixed-clipping"),
        pytest.param(ADAPTIVE, True, id="adaptive-clipping-bit-masked"),
    ],
)
def test_a_dp_secure_try_clips_to_its_approval_and_weights_every_device_one(
    approval_fields: dict[str, object], clip_bit: bool
) -> None:
    # Prepare
    state, event = _dp_secure(4, **approval_fields)

    # Execute
    new, effects = decide(state, event)

    # Assert
    opened = _opened(effects)
    secure = _check_consistent(opened, _requests(effects))
    assert (secure.clip_norm, secure.weight_cap, secure.clip_bit) == (2.5, 1, clip_bit)
    assert secure.graph_seed == SEED and secure.stage_timeout_s == 10.0
    (approve,) = [e for e in effects if isinstance(e, ApproveRound)]
    assert approve.deadline == new.round.deadline == NOW + ROUND_TIMEOUT + timedelta(seconds=40)  # type: ignore[union-attr]
    assert opened.deadline == NOW + ROUND_TIMEOUT


def test_an_empty_dp_draw_gets_no_section_and_releases_pure_noise() -> None:
    # Execute
    _, effects = decide(*_dp_secure(0))

    # Assert: nobody to hide; the aggregator releases noise as without secure aggregation.
    assert _opened(effects).secure_aggregation is None
    assert _requests(effects) == []


@pytest.mark.parametrize("participants", [1, 2])
def test_a_dp_draw_too_small_for_the_protocol_keeps_its_section_and_asks_nobody(
    participants: int,
) -> None:
    # Execute
    _, effects = decide(*_dp_secure(participants))

    # Assert: the aggregator fails the try (with its reason); no update is sent in the clear.
    assert _opened(effects).secure_aggregation is not None
    assert _requests(effects) == []


# --- the shell's seed ----------------------------------------------------------------------


def test_the_shell_draws_a_fresh_seed_for_secure_tasks_only() -> None:
    secure = spec(min_devices=3, devices_per_round=3, secure_aggregation={})

    seeds = {draw_graph_seed(secure) for _ in range(4)}

    assert all(s is not None and len(s) == 32 for s in seeds) and len(seeds) == 4
    assert draw_graph_seed(spec()) is None
