"""A round as stages: a two-stage toy round (commit, then reveal) driven through the machinery,
so that it is not shaped around the one stage rounds have today."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedcommon.messages.v1 import Participant
from fedengine_aggregator.core.offsets import Holds, safe_commit_offset
from fedengine_aggregator.core.stages import Placement, Progress, RoundStages, StageSpec

T0 = datetime(2030, 1, 1, tzinfo=UTC)
COMMITS, REVEALS = "toy.commits", "toy.reveals"


def people(*names: str) -> dict[str, Participant]:
    return {n: Participant(device_id=n, public_key=n.encode().ljust(32, b"k")) for n in names}


def toy_plan(
    *,
    commit_min: int = 2,
    reveal_min: int = 2,
    reveal_expected: dict[str, Participant] | None = None,
) -> list[StageSpec]:
    """Commit to a value by T0+10 s, reveal it by T0+20 s, on a topic of its own."""
    return [
        StageSpec(
            "commit",
            frozenset({COMMITS}),
            T0 + timedelta(seconds=10),
            commit_min,
            people("a", "b", "c", "d"),
        ),
        StageSpec(
            "reveal", frozenset({REVEALS}), T0 + timedelta(seconds=20), reveal_min, reveal_expected
        ),
    ]


def test_a_two_stage_round_carries_survivors_and_dropouts_through_its_own_deadlines() -> None:
    # Prepare: four expected committers; two reveal records arrive before the reveal stage
    # (their topic is read on its own), one of them from a device that never commits.
    round_: RoundStages[tuple[str, str]] = RoundStages(toy_plan())
    holds = Holds()
    log: list[tuple[str, str]] = [
        (COMMITS, "a"),
        (REVEALS, "a"),  # early: the reveal stage has not begun
        (COMMITS, "b"),
        (REVEALS, "d"),  # early, and d never commits: the reveal stage will not expect it
        (COMMITS, "c"),
    ]
    stage_of = {COMMITS: "commit", REVEALS: "reveal"}

    # Execute: the commit stage, then its deadline passes without d.
    for offset, (topic, sender) in enumerate(log):
        name = stage_of[topic]
        holds.hold(topic, 0, offset)
        placement = round_.place(name)
        if placement == Placement.EARLY:
            round_.hold_early(name, (topic, sender))
        elif placement == Placement.CURRENT and round_.current.expects(sender) is not None:
            round_.current.survive(sender)
    before_deadline = round_.advance(T0 + timedelta(seconds=9))
    at_deadline = round_.advance(T0 + timedelta(seconds=10))
    commit = round_.stage("commit")
    held = round_.take_early()
    for _, sender in held:
        if round_.current.expects(sender) is not None:
            round_.current.survive(sender)

    # Assert: the commit stage waited for d, then ended at its own deadline with a, b, c.
    assert before_deadline == Progress.WAIT
    assert at_deadline == Progress.NEXT
    assert commit is not None
    assert commit.survivors == ["a", "b", "c"] and commit.dropped() == ["d"]
    # The reveal stage expects exactly the committers, found by id; d's early reveal is not
    # counted, a's is.
    reveal = round_.current
    assert reveal.name == "reveal"
    assert set(reveal.expected) == {"a", "b", "c"}
    assert reveal.expects("d") is None
    assert held == [(REVEALS, "a"), (REVEALS, "d")]
    assert reveal.survivors == ["a"]
    # A commit arriving now is late; the commit topic is still held from the first record.
    assert round_.place("commit") == Placement.LATE
    assert round_.place("nonsense") == Placement.UNKNOWN
    assert safe_commit_offset([holds], topic=COMMITS, partition=0, next_offset=5) == 0
    assert safe_commit_offset([holds], topic=REVEALS, partition=0, next_offset=5) == 1

    # Execute: c drops out between the stages; b reveals; the reveal deadline passes.
    round_.current.survive("b")
    waiting = round_.advance(T0 + timedelta(seconds=19))
    done = round_.advance(T0 + timedelta(seconds=20))

    # Assert: the round completes with the reveal stage's survivors.
    assert waiting == Progress.WAIT
    assert done == Progress.COMPLETE
    assert reveal.survivors == ["a", "b"] and reveal.dropped() == ["c"]
    assert round_.ended == Progress.COMPLETE
    assert round_.advance(T0 + timedelta(seconds=30)) == Progress.COMPLETE
    assert round_.place("reveal") == Placement.LATE


def test_a_later_stage_below_its_minimum_fails_the_round() -> None:
    # Prepare: three must reveal, but only two committed.
    round_: RoundStages[str] = RoundStages(toy_plan(reveal_min=3))
    for sender in ("a", "b"):
        round_.current.survive(sender)

    # Execute
    first = round_.advance(T0 + timedelta(seconds=10))
    second = round_.advance(T0 + timedelta(seconds=10))

    round_.current.survive("a")
    round_.current.survive("b")
    third = round_.advance(T0 + timedelta(seconds=11))

    # Assert: the reveal stage began with the two committers; once both revealed it ended,
    # below its minimum, and the round failed.
    assert first == Progress.NEXT
    assert second == Progress.WAIT
    assert third == Progress.FAIL
    assert round_.ended == Progress.FAIL


def test_a_stage_ends_early_once_every_expected_sender_delivered() -> None:
    # Prepare: the reveal stage narrows its senders to a and b.
    round_: RoundStages[str] = RoundStages(toy_plan(reveal_expected=people("a", "b")))
    for sender in ("a", "b", "c", "d"):
        round_.current.survive(sender)

    # Execute: everyone committed, long before the commit deadline.
    progress = round_.advance(T0)

    # Assert
    assert progress == Progress.NEXT
    assert list(round_.current.expected) == ["a", "b"]
    for sender in ("a", "b"):
        round_.current.survive(sender)
    assert round_.advance(T0) == Progress.COMPLETE


def test_records_given_back_after_an_outage_come_first() -> None:
    # Prepare: two records held for the reveal stage, handed over when it begins.
    round_: RoundStages[str] = RoundStages(toy_plan())
    round_.hold_early("reveal", "r1")
    round_.hold_early("reveal", "r2")
    for sender in ("a", "b", "c", "d"):
        round_.current.survive(sender)
    assert round_.advance(T0) == Progress.NEXT
    taken = round_.take_early()

    # Execute: r1 was handled, then an outage: r2 goes back.
    round_.return_early(taken[1:])

    # Assert
    assert taken == ["r1", "r2"]
    assert round_.take_early() == ["r2"]
    assert round_.take_early() == []


def test_a_stage_that_needs_no_sender_completes_at_once_when_none_is_expected() -> None:
    # Arrange: a DP round whose Poisson draw was empty (min_senders 0, nobody expected)
    round_ = RoundStages([StageSpec("updates", frozenset({COMMITS}), T0, 0, people())])

    # Execute / Assert: nothing to wait for; it goes on to release the noise.
    assert round_.advance(T0 - timedelta(seconds=1)) == Progress.COMPLETE


def test_bad_plans_and_bad_senders_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        RoundStages([])
    with pytest.raises(ValueError, match="repeat"):
        RoundStages([toy_plan()[0], toy_plan()[0]])
    with pytest.raises(ValueError, match="must name its senders"):
        RoundStages([toy_plan()[1]])
    with pytest.raises(ValueError, match="min_senders"):
        StageSpec("x", frozenset({COMMITS}), T0, -1, people("a"))
    with pytest.raises(ValueError, match="topics"):
        StageSpec("x", frozenset(), T0, 1, people("a"))
    round_: RoundStages[str] = RoundStages(toy_plan())
    with pytest.raises(ValueError, match="not an expected sender"):
        round_.current.survive("z")
    with pytest.raises(ValueError, match="not a later stage"):
        round_.hold_early("commit", "x")
    assert round_.topics() == frozenset({COMMITS, REVEALS})


def test_a_stage_ends_when_every_expected_sender_answered_delivered_or_refused() -> None:
    # Prepare: a, b and c expected; a delivers, b's own record is refused.
    round_: RoundStages[tuple[str, str]] = RoundStages(toy_plan(commit_min=1))
    stage = round_.current
    stage.survive("a")
    stage.refuse("b")
    stage.refuse("mallory")  # not expected: ignored
    before = T0 + timedelta(seconds=1)

    # Execute / Assert: c has not answered; once it is refused too, the stage is over.
    assert stage.progress(before) == Progress.WAIT
    stage.refuse("c")
    stage.survive("c")  # a later good record from c still counts, once
    assert stage.survivors == ["a", "c"]
    assert stage.progress(before) == Progress.WAIT  # d has not answered
    stage.refuse("d")
    assert stage.progress(before) == Progress.COMPLETE
    assert stage.dropped() == ["b", "d"]


def test_a_stage_with_enough_senders_ends_before_the_rest_answer() -> None:
    # An over-selected round: four asked, two enough.
    spec = StageSpec(
        "updates",
        frozenset({COMMITS}),
        T0 + timedelta(seconds=10),
        1,
        people("a", "b", "c", "d"),
        enough=2,
    )
    round_: RoundStages[tuple[str, str]] = RoundStages([spec])
    stage = round_.stages[0]

    stage.survive("a")
    assert stage.progress(T0) == Progress.WAIT
    stage.survive("c")

    assert stage.progress(T0) == Progress.COMPLETE
    assert stage.survivors == ["a", "c"] and stage.dropped() == ["b", "d"]
