"""The privacy service on the real broker and PostgreSQL: spend requests signed as the
coordinator sends them are approved while the task's ε fits its budget, refused (with one
budget-exhausted event) once the next would pass it, answered once, audited, kept in an
append-only ledger, and charged from that ledger after a SIGKILL and restart."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from fedcommon import codec, kafka, topics
from fedcommon.messages.v1 import (
    PrivacyBudgetExhausted,
    PrivacySpec,
    PrivacySpendApproved,
    PrivacySpendRefused,
    PrivacySpendRequested,
)
from fedengine import launcher
from fedengine_privacy import store as privacy_store
from fedengine_privacy.core.ledger import Budget
from fedprivacy.accountants import Accountant
from fedprivacy.accounting import (
    GaussianRelease,
    epsilon_for_releases,
    max_steps_within_budget,
)
from fedprivacy.calibration import calibrate_noise_multiplier
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.kafka_tools import (
    assign_from_start,
    decoded,
    find_record,
    headers_of,
    send_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

logging.getLogger("absl").setLevel(logging.ERROR)

DELTA = 1e-5


def spend_request(
    task_id: uuid.UUID,
    round_number: int,
    *,
    budget: PrivacySpec,
    sample_rate: float,
    planned_rounds: int = 20,
    attempt: int = 0,
) -> PrivacySpendRequested:
    """What the coordinator sends before a DP round's try opens."""
    return PrivacySpendRequested(
        producer="coordinator",
        round_id=uuid.uuid4(),
        task_id=task_id,
        round_number=round_number,
        attempt=attempt,
        budget=budget,
        planned_rounds=planned_rounds,
        sample_rate=sample_rate,
        on_behalf_of="alice",
    )


async def send_as_coordinator(stack: Stack, *messages: PrivacySpendRequested) -> None:
    """Publish ``messages`` on fed.privacy, keyed by task and signed as the coordinator."""
    producer = kafka.make_producer(
        stack.kafka, client_id="pytest-coordinator", signer=stack.signer("coordinator")
    )
    await producer.start()
    try:
        for message in messages:
            topic = topics.topic_name(stack.kafka.topic_prefix, topics.PRIVACY)
            await producer.send_and_wait(
                topic, codec.encode(message), key=str(message.task_id).encode()
            )
    finally:
        await producer.stop()


async def read_all(
    stack: Stack,
    base: str,
    predicate: Callable[[ConsumerRecord], bool],
    *,
    count: int,
    settle_s: float = 2.0,
    timeout_s: float = 60.0,
) -> list[ConsumerRecord]:
    """Read ``base`` from the start until ``count`` records match, then ``settle_s`` more (so
    that an extra answer would be seen); return every match."""
    consumer = AIOKafkaConsumer(
        **kafka.client_options(stack.kafka), enable_auto_commit=False, fetch_max_wait_ms=50
    )
    found: list[ConsumerRecord] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    settled_at: float | None = None
    await consumer.start()
    try:
        await assign_from_start(consumer, topics.topic_name(stack.kafka.topic_prefix, base))
        while loop.time() < (settled_at or deadline):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found += [record for record in records if predicate(record)]
            if settled_at is None and len(found) >= count:
                settled_at = loop.time() + settle_s
        return found
    finally:
        await consumer.stop()


def about(task_id: uuid.UUID) -> Callable[[ConsumerRecord], bool]:
    def matches(record: ConsumerRecord) -> bool:
        message = decoded(record)
        return getattr(message, "task_id", None) == task_id and message.producer == "privacy"

    return matches


async def audit_rows(db: psycopg.AsyncConnection, task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    cursor = await db.execute(
        "SELECT round_number, attempt, decision, reason, requested_by, on_behalf_of, "
        "epsilon_before, epsilon_after, request_message_id "
        "FROM privacy.audit_public WHERE task_id = %s ORDER BY audit_id",
        (task_id,),
    )
    return await cursor.fetchall()


async def test_spends_are_approved_until_the_budget_then_refused_once_and_audited(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: q = 0.1, z = 2: `fitting` rounds fit in ε = 1 (11, by the accountant).
    task_id = uuid.uuid4()
    budget = PrivacySpec(epsilon=1.0, delta=DELTA, clip_norm=0.5, noise_multiplier=2.0)
    fitting = max_steps_within_budget(
        sample_rate=0.1,
        noise_multiplier=2.0,
        delta=DELTA,
        epsilon_budget=1.0,
        accountant=Accountant.RDP,
    )
    requests = [
        spend_request(task_id, n, budget=budget, sample_rate=0.1) for n in range(1, fitting + 3)
    ]
    # A second request for round 1 (a new message), and round 1's very message redelivered.
    repeated = spend_request(task_id, 1, budget=budget, sample_rate=0.1)

    # Execute
    await send_as_coordinator(stack, *requests, repeated, requests[0])
    rows = await eventually(
        lambda: _when(audit_rows(db, task_id), lambda r: len(r) >= fitting + 3), timeout_s=60
    )
    answers = await read_all(stack, topics.PRIVACY, about(task_id), count=fitting + 2)
    events = await read_all(stack, topics.EVENTS, about(task_id), count=1)

    # Assert: approvals for the rounds that fit, ε growing with each, never past the budget.
    messages = [decoded(record) for record in answers]
    approvals = [m for m in messages if isinstance(m, PrivacySpendApproved)]
    refusals = [m for m in messages if isinstance(m, PrivacySpendRefused)]
    assert len(messages) == fitting + 2, "one answer per (round, attempt), none for repeats"
    assert [a.round_number for a in approvals] == list(range(1, fitting + 1))
    spent = [a.epsilon_spent for a in approvals]
    assert spent == sorted(spent) and len(set(spent)) == len(spent)
    assert spent[-1] <= 1.0
    for index, approval in enumerate(approvals):
        request = requests[index]
        assert approval.correlation_id == request.message_id
        assert approval.round_id == request.round_id
        assert (approval.noise_multiplier, approval.sample_rate, approval.clip_norm) == (
            2.0,
            0.1,
            0.5,
        )
        assert (approval.epsilon_budget, approval.delta, approval.accountant) == (1.0, DELTA, "rdp")
        expected = epsilon_for_releases(
            [GaussianRelease(0.1, 2.0, index + 1)], delta=DELTA, accountant=Accountant.RDP
        ).epsilon
        assert approval.epsilon_spent == pytest.approx(expected, rel=1e-12)
    assert len({a.approval_id for a in approvals}) == fitting
    assert all(headers_of(record)["fe-signer"] == "privacy" for record in answers)
    # Then refusals: the next round would pass ε = 1, and so would the one after.
    assert [r.round_number for r in refusals] == [fitting + 1, fitting + 2]
    assert all(r.reason == "budget_exhausted" for r in refusals)
    assert refusals[0].detail.startswith(f"round {fitting + 1} would spend epsilon 1.")
    assert refusals[0].epsilon_spent == spent[-1]
    # One budget-exhausted event for the task, whatever the number of refusals.
    assert len(events) == 1
    exhausted = decoded(events[0])
    assert isinstance(exhausted, PrivacyBudgetExhausted)
    assert exhausted.epsilon_spent == spent[-1] and exhausted.epsilon_budget == 1.0

    # The audit log: every decision, who asked (the signing service) for whom; the repeat of
    # round 1 as a duplicate; the redelivered message not at all.
    decisions = [(r[0], r[2]) for r in rows]
    assert decisions == [
        *[(n, "approved") for n in range(1, fitting + 1)],
        (fitting + 1, "refused"),
        (fitting + 2, "refused"),
        (1, "duplicate"),
    ]
    assert {(r[4], r[5]) for r in rows} == {("coordinator", "alice")}
    assert [r[7] for r in rows[:fitting]] == spent
    assert rows[fitting][3].startswith("budget_exhausted: round")
    assert rows[-1][8] == repeated.message_id and rows[-1][6] == spent[-1]
    cursor = await db.execute(
        "SELECT round_number, epsilon_after, approval_id FROM privacy.releases_public "
        "WHERE task_id = %s ORDER BY round_number",
        (task_id,),
    )
    ledger = await cursor.fetchall()
    assert [(r[0], r[1], r[2]) for r in ledger] == [
        (a.round_number, a.epsilon_spent, a.approval_id) for a in approvals
    ]
    cursor = await db.execute(
        "SELECT epsilon_budget, noise_multiplier, calibrated, epsilon_spent, releases, "
        "exhausted_at IS NOT NULL FROM privacy.budgets_public WHERE task_id = %s",
        (task_id,),
    )
    assert await cursor.fetchone() == (1.0, 2.0, False, spent[-1], fitting, True)


async def _when(rows: Any, condition: Callable[[Any], bool]) -> Any:
    value = await rows
    return value if condition(value) else None


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("UPDATE privacy.releases SET epsilon_after = 0 WHERE task_id = %s", "append-only"),
        ("DELETE FROM privacy.releases WHERE task_id = %s", "append-only"),
        ("UPDATE privacy.audit_log SET decision = 'approved' WHERE task_id = %s", "append-only"),
        ("DELETE FROM privacy.audit_log WHERE task_id = %s", "append-only"),
        # A budget is fixed by its first request: only its exhaustion may be stamped, once.
        ("UPDATE privacy.budgets SET epsilon_budget = 100 WHERE task_id = %s", "only exhausted"),
        ("UPDATE privacy.budgets SET exhausted_at = now() WHERE task_id = %s", "only exhausted"),
        ("DELETE FROM privacy.budgets WHERE task_id = %s", "append-only"),
    ],
)
async def test_the_ledger_and_the_audit_log_refuse_changes(
    stack: Stack, db: psycopg.AsyncConnection, statement: str, refusal: str
) -> None:
    # Prepare: one approved release of a task of its own.
    task_id = uuid.uuid4()
    budget = PrivacySpec(epsilon=2.0, delta=DELTA, noise_multiplier=3.0)
    await send_as_coordinator(stack, spend_request(task_id, 1, budget=budget, sample_rate=0.2))
    await eventually(lambda: _when(audit_rows(db, task_id), bool), timeout_s=30)

    # Execute / Assert: the database itself refuses, whoever asks. (The budget is stamped
    # exhausted first, so that stamping it again is a change too.)
    if "exhausted_at" in statement:
        await db.execute(
            "UPDATE privacy.budgets SET exhausted_at = now() WHERE task_id = %s", (task_id,)
        )
    with pytest.raises(psycopg.errors.RaiseException, match=refusal):
        await db.execute(statement, (task_id,))
    cursor = await db.execute(
        "SELECT count(*) FROM privacy.releases_public WHERE task_id = %s AND epsilon_after > 0",
        (task_id,),
    )
    assert await cursor.fetchone() == (1,)
    for table in ("releases", "audit_log", "budgets"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            await db.execute(f"TRUNCATE privacy.{table} CASCADE")


def _approval_of(record: ConsumerRecord, task_id: uuid.UUID) -> PrivacySpendApproved | None:
    message = decoded(record)
    if isinstance(message, PrivacySpendApproved) and message.task_id == task_id:
        return message
    return None


async def test_an_adaptive_round_is_charged_z_and_its_split_is_in_the_ledger(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: adaptive clipping, z = 2, 100 expected participants (σ_b = 5), rounds at
    # C = 1 (the section's) then 0.4 (moved by the coordinator).
    task_id = uuid.uuid4()
    budget = PrivacySpec.model_validate(
        {"epsilon": 3.0, "noise_multiplier": 2.0, "adaptive_clipping": {"target_quantile": 0.5}}
    )
    requests = [
        spend_request(task_id, n, budget=budget, sample_rate=0.1).model_copy(
            update={"clip_norm": clip, "expected_participants": 100.0}
        )
        for n, clip in ((1, None), (2, 0.4))
    ]

    # Execute
    await send_as_coordinator(stack, *requests)
    records = await read_all(
        stack,
        topics.PRIVACY,
        lambda r: _approval_of(r, task_id) is not None,
        count=2,
    )

    # Assert: each approval splits z = 2 into z_Δ = (1/4 − 1/100)^(−1/2) and σ_b = 5, at the
    # round's C; ε is that of two plain releases at z (what the split is worth).
    approvals = [a for r in records if (a := _approval_of(r, task_id)) is not None]
    assert [a.clip_norm for a in approvals] == [1.0, 0.4]
    for approval in approvals:
        assert approval.noise_multiplier == 2.0
        assert approval.count_noise_std == 5.0
        assert approval.update_noise_multiplier == pytest.approx((0.25 - 0.01) ** -0.5)
    plain = epsilon_for_releases(
        [GaussianRelease(0.1, 2.0, 2)], delta=DELTA, accountant=Accountant.RDP
    ).epsilon
    assert approvals[-1].epsilon_spent == pytest.approx(plain)
    cursor = await db.execute(
        "SELECT mechanism, clip_norm, count_noise_std FROM privacy.releases_public "
        "WHERE task_id = %s ORDER BY round_number",
        (task_id,),
    )
    assert await cursor.fetchall() == [
        ("subsampled_gaussian_adaptive_clip", 1.0, 5.0),
        ("subsampled_gaussian_adaptive_clip", 0.4, 5.0),
    ]


async def test_after_a_sigkill_epsilon_continues_from_the_ledger(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: a calibrated budget (the service finds z for 10 planned rounds at q = 0.1).
    task_id = uuid.uuid4()
    budget = PrivacySpec(epsilon=1.0, delta=DELTA, noise_multiplier="calibrate")
    rates = [0.1, 0.12, 0.1]
    first = [
        spend_request(task_id, n, budget=budget, sample_rate=q, planned_rounds=10)
        for n, q in enumerate(rates[:2], start=1)
    ]
    await send_as_coordinator(stack, *first)
    await eventually(lambda: _when(audit_rows(db, task_id), lambda r: len(r) == 2), timeout_s=60)

    # Execute: kill the service; once restarted, it decides round 3.
    await asyncio.to_thread(launcher.restart, stack.settings, "privacy", kill=True)
    third = spend_request(task_id, 3, budget=budget, sample_rate=rates[2], planned_rounds=10)
    await send_as_coordinator(stack, third)
    record = await find_record(
        stack.kafka,
        topics.PRIVACY,
        lambda r: (
            isinstance(m := decoded(r), PrivacySpendApproved)
            and m.round_number == 3
            and m.task_id == task_id
        ),
        timeout_s=60,
    )

    # Assert: round 3 is charged on top of rounds 1 and 2, recomputed from the ledger.
    approval = decoded(record)
    assert isinstance(approval, PrivacySpendApproved)
    z = calibrate_noise_multiplier(
        target_epsilon=1.0, delta=DELTA, sample_rate=0.1, steps=10, accountant=Accountant.RDP
    ).noise_multiplier
    assert approval.noise_multiplier == pytest.approx(z, rel=1e-9)
    expected = epsilon_for_releases(
        [
            GaussianRelease(0.1, approval.noise_multiplier, 2),
            GaussianRelease(0.12, approval.noise_multiplier, 1),
        ],
        delta=DELTA,
        accountant=Accountant.RDP,
    ).epsilon
    assert approval.epsilon_spent == pytest.approx(expected, rel=1e-12)
    alone = epsilon_for_releases(
        [GaussianRelease(0.1, approval.noise_multiplier, 1)], delta=DELTA, accountant=Accountant.RDP
    ).epsilon
    # A service that had started from zero would have charged round 3 alone.
    assert approval.epsilon_spent > alone
    rows = await audit_rows(db, task_id)
    assert [r[6] for r in rows] == [0.0, rows[0][7], rows[1][7]]  # each ε_before: the last ε
    cursor = await db.execute(
        "SELECT calibrated, noise_multiplier, releases, epsilon_spent "
        "FROM privacy.budgets_public WHERE task_id = %s",
        (task_id,),
    )
    assert await cursor.fetchone() == (True, approval.noise_multiplier, 3, approval.epsilon_spent)


async def test_a_malformed_or_forged_request_is_dead_lettered_and_the_service_goes_on(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: garbage, and a spend request signed by the gateway (only the coordinator may).
    task_id = uuid.uuid4()
    budget = PrivacySpec(epsilon=1.0, delta=DELTA, noise_multiplier=4.0)
    forged = spend_request(task_id, 1, budget=budget, sample_rate=0.1)
    key = str(task_id).encode()
    topic = topics.topic_name(stack.kafka.topic_prefix, topics.PRIVACY)

    # Execute
    await send_raw(stack.kafka, topics.PRIVACY, key=key, value=b"\xc1 not msgpack")
    await send_raw(
        stack.kafka,
        topics.PRIVACY,
        key=key,
        value=codec.encode(forged),
        signer=stack.signer("gateway"),
    )
    good = spend_request(task_id, 2, budget=budget, sample_rate=0.1)
    await send_as_coordinator(stack, good)

    # Assert: both dead-lettered by the privacy service with provenance; the valid request
    # after them is approved, and the forged one left no trace in the ledger.
    letters = await read_all(
        stack,
        topics.DLQ,
        lambda r: r.key == key and headers_of(r).get("original_topic") == topic,
        count=2,
    )
    # (Every consumer of fed.privacy dead-letters what it cannot take: the privacy service's
    # letters are those it signed.)
    ours = [r for r in letters if headers_of(r).get("fe-signer") == "privacy"]
    assert sorted(headers_of(r)["error_type"] for r in ours) == ["invalid", "untrusted"]
    rows = await eventually(lambda: _when(audit_rows(db, task_id), bool), timeout_s=30)
    assert [(r[0], r[2]) for r in rows] == [(2, "approved")]


async def test_an_accountant_error_is_refused_as_invalid_and_the_service_goes_on(
    stack: Stack, db: psycopg.AsyncConnection
) -> None:
    # Prepare: a task whose budget was fixed before the schema's bound on z (issue 15): a
    # calibrated z = 1e-300, stored as the first request would have. Its next, schema-valid
    # request ("calibrate" matches the stored budget) makes dp-accounting raise
    # ZeroDivisionError at q < 1; before, that was an unhandled dead letter and a round that
    # waited for ever.
    task_id = uuid.uuid4()
    budget = PrivacySpec(epsilon=1.0, delta=DELTA, noise_multiplier="calibrate")
    stored = Budget(
        epsilon=1.0,
        delta=DELTA,
        accountant=Accountant.RDP,
        clip_norm=1.0,
        noise_multiplier=1e-300,
        calibrated=True,
        planned_rounds=20,
    )
    await privacy_store.insert_budget(db, task_id, stored)
    request = spend_request(task_id, 1, budget=budget, sample_rate=0.1)
    healthy = uuid.uuid4()
    after = spend_request(
        healthy, 1, budget=PrivacySpec(epsilon=1.0, noise_multiplier=4.0), sample_rate=0.1
    )

    # Execute
    await send_as_coordinator(stack, request, after)
    (answer,) = await read_all(stack, topics.PRIVACY, about(task_id), count=1)
    (next_answer,) = await read_all(stack, topics.PRIVACY, about(healthy), count=1)

    # Assert: a refusal naming the error, audited; the next task's request is approved.
    refusal = decoded(answer)
    assert isinstance(refusal, PrivacySpendRefused)
    assert refusal.reason == "invalid"
    assert refusal.correlation_id == request.message_id
    assert "the accountant cannot evaluate this request (ZeroDivisionError" in refusal.detail
    rows = await audit_rows(db, task_id)
    assert [(r[0], r[2]) for r in rows] == [(1, "refused")]
    assert isinstance(decoded(next_answer), PrivacySpendApproved)
