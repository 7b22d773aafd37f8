"""The ledger's pure decisions: fix the budget, approve within it, refuse past it, answer a
(task, round, attempt) once, and recompute ε from the ledger exactly as the accountant does."""

from __future__ import annotations

import logging
import math
import random
import uuid
from typing import Any

import pytest

from fedcommon.messages.v1 import PrivacySpec, PrivacySpendRequested
from fedengine_privacy.core.ledger import (
    Approve,
    Budget,
    Duplicate,
    Refuse,
    Release,
    decide,
    epsilon_spent,
    grouped,
)
from fedprivacy.accountants import Accountant
from fedprivacy.accounting import (
    GaussianRelease,
    epsilon_for_releases,
    epsilon_subsampled_gaussian,
    max_steps_within_budget,
)
from fedprivacy.calibration import calibrate_noise_multiplier

logging.getLogger("absl").setLevel(logging.ERROR)

TASK = uuid.UUID("00000000-0000-4000-8000-000000000009")
APPROVAL = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
DELTA = 1e-5
Q = 0.1
Z = 2.0


def request(round_number: int = 1, attempt: int = 0, **spec: Any) -> PrivacySpendRequested:
    """A spend request for TASK; ``spec`` overrides the budget (ε 1, z 2, RDP) and may set
    ``sample_rate``, ``planned_rounds``, and the round's ``round_clip`` and ``expected``."""
    sample_rate = spec.pop("sample_rate", Q)
    planned_rounds = spec.pop("planned_rounds", 10)
    round_clip = spec.pop("round_clip", None)
    expected = spec.pop("expected", None)
    budget = PrivacySpec(**({"epsilon": 1.0, "noise_multiplier": Z} | spec))
    return PrivacySpendRequested(
        producer="coordinator",
        round_id=uuid.uuid4(),
        task_id=TASK,
        round_number=round_number,
        attempt=attempt,
        budget=budget,
        planned_rounds=planned_rounds,
        sample_rate=sample_rate,
        on_behalf_of="alice",
        clip_norm=round_clip,
        expected_participants=expected,
    )


def fixed(**changes: Any) -> Budget:
    """The budget ``request()`` fixes."""
    values: dict[str, Any] = {
        "epsilon": 1.0,
        "delta": DELTA,
        "accountant": Accountant.RDP,
        "clip_norm": 1.0,
        "noise_multiplier": Z,
        "calibrated": False,
        "planned_rounds": 10,
    }
    return Budget(**(values | changes))


def ledger(rounds: int, *, sample_rate: float = Q) -> list[Release]:
    return [Release(n, 0, sample_rate, Z) for n in range(1, rounds + 1)]


def epsilon_of(rounds: int) -> float:
    return epsilon_subsampled_gaussian(
        sample_rate=Q, noise_multiplier=Z, steps=rounds, delta=DELTA, accountant=Accountant.RDP
    ).epsilon


# How many rounds of q = 0.1, z = 2 fit in ε = 1 (11, by the accountant itself).
FITTING = max_steps_within_budget(
    sample_rate=Q, noise_multiplier=Z, delta=DELTA, epsilon_budget=1.0, accountant=Accountant.RDP
)


def test_the_first_request_fixes_the_budget_and_is_charged() -> None:
    # Execute
    decision = decide(None, [], request(clip_norm=2.0), approval_id=APPROVAL)

    # Assert
    assert isinstance(decision, Approve)
    assert decision.new_budget
    assert decision.budget == fixed(clip_norm=2.0)
    assert decision.approval_id == APPROVAL
    assert decision.release == Release(1, 0, Q, Z, 1, clip_norm=2.0)
    assert decision.epsilon_before == 0.0
    assert decision.epsilon_after == epsilon_of(1)


def test_calibrate_fixes_z_once_for_the_planned_rounds_which_then_all_fit() -> None:
    # Prepare: "calibrate" spreads ε = 1 over 5 planned rounds at the first request's q.
    asked = {"noise_multiplier": "calibrate", "planned_rounds": 5}
    expected_z = calibrate_noise_multiplier(
        target_epsilon=1.0, delta=DELTA, sample_rate=Q, steps=5, accountant=Accountant.RDP
    ).noise_multiplier

    # Execute: the first request fixes z; each later one is decided against the ledger.
    first = decide(None, [], request(1, **asked), approval_id=APPROVAL)
    assert isinstance(first, Approve)
    budget, releases = first.budget, [first.release]
    decisions: list[Approve | Refuse | Duplicate] = []
    for n in range(2, 7):
        decision = decide(budget, releases, request(n, **asked), approval_id=uuid.uuid4())
        decisions.append(decision)
        if isinstance(decision, Approve):
            releases = [*releases, decision.release]

    # Assert
    assert first.new_budget and budget.calibrated
    assert budget.noise_multiplier == expected_z
    assert [type(d) for d in decisions] == [Approve] * 4 + [Refuse]
    last = decisions[3]
    assert isinstance(last, Approve) and last.epsilon_after <= 1.0


@pytest.mark.parametrize(
    ("ledger_rounds", "expected"),
    [(0, Approve), (1, Approve), (FITTING - 1, Approve), (FITTING, Refuse), (FITTING + 3, Refuse)],
)
def test_a_round_is_approved_iff_the_ledger_plus_it_fits_the_budget(
    ledger_rounds: int, expected: type
) -> None:
    # Prepare
    next_round = ledger_rounds + 1

    # Execute
    decision = decide(fixed(), ledger(ledger_rounds), request(next_round), approval_id=APPROVAL)

    # Assert: approval is charged at ε(n + 1); a refusal names the ε it would reach.
    assert isinstance(decision, expected)
    assert decision.epsilon_before == (epsilon_of(ledger_rounds) if ledger_rounds else 0.0)
    if isinstance(decision, Approve):
        assert decision.epsilon_after == epsilon_of(next_round) <= 1.0
        assert not decision.new_budget
    else:
        assert isinstance(decision, Refuse)
        assert decision.reason == "budget_exhausted"
        assert decision.epsilon_after == epsilon_of(next_round) > 1.0
        assert decision.detail == (
            f"round {next_round} would spend epsilon {epsilon_of(next_round):.6g} of 1"
        )
        assert decision.announce
        assert decision.budget == fixed(exhausted=True)


def test_the_budget_exhausted_announcement_is_made_once() -> None:
    decision = decide(
        fixed(exhausted=True), ledger(FITTING), request(FITTING + 1), approval_id=APPROVAL
    )

    assert isinstance(decision, Refuse)
    assert decision.reason == "budget_exhausted"
    assert not decision.announce


def test_a_first_request_that_alone_passes_the_budget_fixes_it_exhausted() -> None:
    decision = decide(
        None, [], request(noise_multiplier=0.5, sample_rate=1.0), approval_id=APPROVAL
    )

    assert isinstance(decision, Refuse)
    assert decision.new_budget and decision.announce
    assert decision.budget == fixed(noise_multiplier=0.5, exhausted=True)
    assert decision.epsilon_before == 0.0


def test_a_meaningless_epsilon_is_refused_without_a_number() -> None:
    decision = decide(
        fixed(noise_multiplier=0.06), [], request(noise_multiplier=0.06), approval_id=APPROVAL
    )

    assert isinstance(decision, Refuse)
    assert decision.reason == "budget_exhausted"
    assert decision.epsilon_after is None
    assert "beyond 100" in decision.detail


@pytest.mark.parametrize(
    ("round_number", "attempt", "refused", "duplicate"),
    [
        (2, 0, (), True),  # approved before
        (2, 1, (), False),  # another try of that round: a new release
        (7, 0, ((7, 0),), True),  # refused before
        (7, 1, ((7, 0),), False),
    ],
)
def test_a_try_answered_before_is_a_duplicate_and_charged_nothing(
    round_number: int, attempt: int, refused: tuple[tuple[int, int], ...], duplicate: bool
) -> None:
    # Execute
    decision = decide(
        fixed(),
        ledger(3),
        request(round_number, attempt),
        approval_id=APPROVAL,
        refused=set(refused),
    )

    # Assert
    assert isinstance(decision, Duplicate) == duplicate
    assert decision.epsilon_before == epsilon_of(3)


def test_a_duplicate_before_any_budget_spent_nothing() -> None:
    decision = decide(None, [], request(1), approval_id=APPROVAL, refused={(1, 0)})

    assert decision == Duplicate(0.0)


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        (fixed(), {"epsilon": 2.0}),
        (fixed(), {"delta": 1e-6}),
        (fixed(), {"clip_norm": 0.5}),
        (fixed(), {"accountant": "pld"}),
        (fixed(), {"noise_multiplier": 6.0}),
        (fixed(), {"noise_multiplier": "calibrate"}),
        (fixed(calibrated=True, noise_multiplier=3.7), {"noise_multiplier": 3.7}),
    ],
    ids=["epsilon", "delta", "clip", "accountant", "z", "now-calibrate", "was-calibrated"],
)
def test_a_request_whose_budget_changed_is_invalid(stored: Budget, asked: dict[str, Any]) -> None:
    decision = decide(stored, ledger(2), request(3, **asked), approval_id=APPROVAL)

    assert isinstance(decision, Refuse)
    assert decision.reason == "invalid"
    assert decision.epsilon_budget == stored.epsilon
    assert decision.epsilon_after is None
    assert not decision.announce and not decision.new_budget


def test_a_calibrated_budget_is_matched_by_calibrate() -> None:
    stored = fixed(calibrated=True, noise_multiplier=3.7)

    decision = decide(stored, [], request(1, noise_multiplier="calibrate"), approval_id=APPROVAL)

    assert isinstance(decision, Approve)
    assert decision.release.noise_multiplier == 3.7


def test_a_calibration_that_fails_is_invalid_and_fixes_no_budget() -> None:
    # ε = 100 at q = 0.01 in one round is met only where the guarantee is meaningless.
    asked = {"epsilon": 100.0, "noise_multiplier": "calibrate", "sample_rate": 0.01}

    decision = decide(None, [], request(1, planned_rounds=1, **asked), approval_id=APPROVAL)

    assert isinstance(decision, Refuse)
    assert decision.reason == "invalid"
    assert decision.budget is None
    assert "calibration failed" in decision.detail
    assert decision.epsilon_budget == 100.0


def test_epsilon_from_many_releases_is_the_accountant_s_on_the_grouped_ledger() -> None:
    # Prepare: 30 releases at three sampling rates (the eligible pool changed), shuffled.
    rates = [0.05] * 12 + [0.08] * 10 + [0.1] * 8
    releases = [Release(n, 0, q, Z) for n, q in enumerate(rates, start=1)]
    random.Random(0).shuffle(releases)
    expected = epsilon_for_releases(
        [GaussianRelease(0.05, Z, 12), GaussianRelease(0.08, Z, 10), GaussianRelease(0.1, Z, 8)],
        delta=DELTA,
        accountant=Accountant.RDP,
    ).epsilon

    # Execute
    groups = grouped(releases)
    spent = epsilon_spent(releases, delta=DELTA, accountant=Accountant.RDP)
    in_order = epsilon_spent(
        sorted(releases, key=lambda r: r.round_number), delta=DELTA, accountant=Accountant.RDP
    )

    # Assert: bit-identical, whatever order the ledger comes in.
    assert groups == [
        GaussianRelease(0.05, Z, 12),
        GaussianRelease(0.08, Z, 10),
        GaussianRelease(0.1, Z, 8),
    ]
    assert spent == expected == in_order
    assert epsilon_spent([], delta=DELTA, accountant=Accountant.RDP) == 0.0


def test_epsilon_under_pld_is_the_pld_accountant_s() -> None:
    releases = ledger(4)

    spent = epsilon_spent(releases, delta=DELTA, accountant=Accountant.PLD)

    assert (
        spent
        == epsilon_for_releases(
            [GaussianRelease(Q, Z, 4)], delta=DELTA, accountant=Accountant.PLD
        ).epsilon
    )
    assert spent < epsilon_of(4)  # PLD is tighter than RDP


# --- adaptive clipping ------------------------------------------------------------------------

ADAPTIVE = {"target_quantile": 0.5}


def test_an_adaptive_round_is_charged_z_and_split_between_the_sum_and_the_count() -> None:
    # Prepare: 100 expected participants → σ_b = max(100/20, z) = 5.
    asked = request(adaptive_clipping=ADAPTIVE, round_clip=0.3, expected=100.0)

    # Execute
    decision = decide(None, [], asked, approval_id=APPROVAL)

    # Assert: charged as one release at z, at the round's own C, with z_Δ = (z⁻² − 10⁻²)^-½.
    assert isinstance(decision, Approve)
    release = decision.release
    assert (release.noise_multiplier, release.clip_norm, release.count_noise_std) == (Z, 0.3, 5.0)
    assert release.update_noise_multiplier == pytest.approx((Z**-2 - 10.0**-2) ** -0.5)
    assert release.mechanism == "subsampled_gaussian_adaptive_clip"
    assert decision.epsilon_after == epsilon_of(1)


def test_a_small_round_raises_the_count_noise_to_z() -> None:
    # 10 expected: the paper's σ_b = 0.5 would leave no room (2σ_b ≤ z = 2); raised to z.
    decision = decide(
        None, [], request(adaptive_clipping=ADAPTIVE, expected=10.0), approval_id=APPROVAL
    )

    assert isinstance(decision, Approve)
    assert decision.release.count_noise_std == Z
    assert decision.release.update_noise_multiplier == pytest.approx(Z / math.sqrt(0.75))


def test_a_count_noise_too_small_for_the_calibrated_z_is_refused_as_invalid() -> None:
    # A given z is checked at task creation (PrivacySpec); a calibrated one only here:
    # ε 1 over 10 rounds at q = 0.1 needs z near 1, far above 2σ_b = 0.2.
    settings = ADAPTIVE | {"count_noise_std": 0.1}
    asked = request(adaptive_clipping=settings, expected=50.0, noise_multiplier="calibrate")

    decision = decide(None, [], asked, approval_id=APPROVAL)

    assert isinstance(decision, Refuse)
    assert decision.reason == "invalid"
    assert "count_noise_std" in decision.detail


def test_fixed_clipping_refuses_a_round_at_another_c() -> None:
    budget = fixed()

    decision = decide(budget, ledger(1), request(2, round_clip=0.5), approval_id=APPROVAL)

    assert isinstance(decision, Refuse)
    assert decision.reason == "invalid"
    assert "not adaptive" in decision.detail


def test_adaptive_settings_are_part_of_the_budget() -> None:
    # A later request may not switch adaptive clipping on (or change its settings).
    decision = decide(
        fixed(),
        ledger(1),
        request(2, adaptive_clipping=ADAPTIVE, expected=10.0),
        approval_id=APPROVAL,
    )

    assert isinstance(decision, Refuse)
    assert decision.reason == "invalid"


def test_a_value_the_accountant_cannot_evaluate_is_refused_as_invalid_with_its_error() -> None:
    # Prepare: z = 1e-300 slips past the schema only if built around it (model_construct);
    # dp-accounting raises ZeroDivisionError on it at q < 1 (issue 15).
    spec = PrivacySpec.model_construct(
        epsilon=1.0,
        delta=DELTA,
        clip_norm=1.0,
        noise_multiplier=1e-300,
        accountant="rdp",
        adaptive_clipping=None,
    )
    asked = request().model_copy(update={"budget": spec})

    # Execute
    decision = decide(None, [], asked, approval_id=APPROVAL)

    # Assert: a refusal the coordinator fails the task with, not an exception.
    assert isinstance(decision, Refuse)
    assert (decision.reason, decision.budget, decision.new_budget) == ("invalid", None, False)
    assert "the accountant cannot evaluate this request (ZeroDivisionError" in decision.detail
    assert decision.epsilon_after is None


def test_an_accountant_error_on_a_stored_budget_keeps_the_budget() -> None:
    # Prepare: a budget stored before the schema's bound (z = 1e-300, fixed).
    budget = fixed(noise_multiplier=1e-300)
    spec = PrivacySpec.model_construct(
        epsilon=1.0,
        delta=DELTA,
        clip_norm=1.0,
        noise_multiplier=1e-300,
        accountant="rdp",
        adaptive_clipping=None,
    )
    asked = request(round_number=2).model_copy(update={"budget": spec})

    # Execute
    decision = decide(budget, [], asked, approval_id=APPROVAL)

    # Assert
    assert isinstance(decision, Refuse)
    assert (decision.reason, decision.budget, decision.new_budget) == ("invalid", budget, False)
    assert "ZeroDivisionError" in decision.detail
