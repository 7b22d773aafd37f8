"""The privacy service's shell: spend requests in, approvals and refusals out.

One transaction per request: it records the message as processed, locks the task, loads the
budget and the ledger, lets ``core.ledger.decide`` choose, and stores the decision (budget,
ledger row, audit row) with the answers written to the outbox, so that an answer is sent iff
its decision is stored. The accounting runs in a worker thread (a PLD calibration takes
seconds) so that the consumer's heartbeats go on meanwhile.

A ``privacy.local_dp_assigned`` (the devices a try asked to train with DP-SGD) charges each
device's ledger (core.device_ledger) in one transaction and answers nothing: the coordinator
reads who is exhausted from ``privacy.device_exhaustion_public`` when it selects.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import uuid4

import psycopg
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from fedcommon import db, outbox, topics, trust
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import (
    AnyMessage,
    Envelope,
    LocalDpAssigned,
    PrivacyBudgetExhausted,
    PrivacySpendApproved,
    PrivacySpendRefused,
    PrivacySpendRequested,
)
from fedcommon.service import ServiceContext, ServiceParts
from fedengine_privacy import store
from fedengine_privacy.core import device_ledger, ledger
from fedengine_privacy.core.ledger import Approve, Decision, Duplicate, Refuse

logger = logging.getLogger(__name__)

PRODUCER = "privacy"

DECISIONS = Counter(
    "fedengine_privacy_decisions_total", "Spend requests decided", ["decision", "reason"]
)

LOCAL_CHARGES = Counter(
    "fedengine_privacy_local_dp_charges_total", "Devices charged for local DP-SGD", ["level"]
)


class Privacy:
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def handle(self, message: AnyMessage, record: ConsumerRecord) -> None:
        match message:
            case PrivacySpendRequested():
                # The consume loop verified the signature: the signer is who asked.
                requested_by = trust.signer_of(record.headers) or message.producer
                await self._spend_requested(message, requested_by=requested_by)
            case LocalDpAssigned():
                await self._local_dp_assigned(message)
                return  # nothing to send
            case PrivacySpendApproved() | PrivacySpendRefused():
                return  # our own answers, on the topic we read: for the coordinator
            case _:
                raise ProtocolViolation(f"the privacy service does not handle {message.type}")
        self.context.relay.wake()

    async def _spend_requested(self, request: PrivacySpendRequested, *, requested_by: str) -> None:
        async with self.context.pool.connection() as conn, conn.transaction():
            if not await db.mark_processed(
                conn, schema=store.SCHEMA, message_id=request.message_id
            ):
                logger.info("duplicate delivery of %s skipped", request.message_id)
                return
            await store.lock_task(conn, request.task_id)
            budget = await store.get_budget(conn, request.task_id)
            releases = await store.releases(conn, request.task_id)
            refused = await store.refused_tries(conn, request.task_id)
            decision = await asyncio.to_thread(
                ledger.decide,
                budget,
                releases,
                request,
                approval_id=uuid4(),
                refused=refused,
            )
            await self._store(conn, request, decision, requested_by=requested_by)

    async def _local_dp_assigned(self, message: LocalDpAssigned) -> None:
        """Charge each device asked to train with DP-SGD, in one transaction."""
        device_ids = [a.device_id for a in message.assignments]
        async with self.context.pool.connection() as conn, conn.transaction():
            if not await db.mark_processed(
                conn, schema=store.SCHEMA, message_id=message.message_id
            ):
                logger.info("duplicate delivery of %s skipped", message.message_id)
                return
            await store.lock_devices(conn, device_ids)
            for assignment in message.assignments:
                history = await store.device_history(conn, assignment.device_id)
                charge = await asyncio.to_thread(
                    device_ledger.charge,
                    assignment.device_id,
                    assignment.settings,
                    history,
                    task_id=message.task_id,
                    round_number=message.round_number,
                    attempt=message.attempt,
                )
                if charge is None:
                    continue
                await store.insert_device_charge(
                    conn,
                    charge,
                    round_id=message.round_id,
                    request_message_id=message.message_id,
                )
                LOCAL_CHARGES.labels(charge.settings.level.value).inc()
                logger.info(
                    "device %s task %s round %d attempt %d: local epsilon %.4g of %g (task), "
                    "%.4g of %g (lifetime)",
                    charge.device_id,
                    charge.task_id,
                    message.round_number,
                    message.attempt,
                    charge.epsilon_task_after,
                    charge.epsilon_task_budget,
                    charge.epsilon_lifetime_after,
                    charge.epsilon_lifetime_budget,
                )

    async def _store(
        self,
        conn: psycopg.AsyncConnection,
        request: PrivacySpendRequested,
        decision: Decision,
        *,
        requested_by: str,
    ) -> None:
        task_id = request.task_id

        async def audit(
            kind: store.AuditDecision, reason: str | None, epsilon_after: float | None
        ) -> None:
            await store.insert_audit(
                conn,
                task_id=task_id,
                round_number=request.round_number,
                attempt=request.attempt,
                request_message_id=request.message_id,
                requested_by=requested_by,
                on_behalf_of=request.on_behalf_of,
                decision=kind,
                reason=reason,
                epsilon_before=decision.epsilon_before,
                epsilon_after=epsilon_after,
            )

        match decision:
            case Duplicate():
                await audit("duplicate", "this round's try was answered before", None)
                DECISIONS.labels("duplicate", "").inc()
                logger.info(
                    "task %s round %d attempt %d: duplicate request, not answered again",
                    task_id,
                    request.round_number,
                    request.attempt,
                )
            case Approve(budget=budget, release=release):
                if decision.new_budget:
                    await store.insert_budget(conn, task_id, budget)
                await store.insert_release(
                    conn,
                    approval_id=decision.approval_id,
                    task_id=task_id,
                    round_id=request.round_id,
                    release=release,
                    budget=budget,
                    epsilon_after=decision.epsilon_after,
                    request_message_id=request.message_id,
                )
                await audit("approved", None, decision.epsilon_after)
                await self._emit(conn, topics.PRIVACY, request, _approval(request, decision))
                DECISIONS.labels("approved", "").inc()
                logger.info(
                    "task %s round %d attempt %d approved: epsilon %.6g of %g",
                    task_id,
                    request.round_number,
                    request.attempt,
                    decision.epsilon_after,
                    budget.epsilon,
                )
            case Refuse(budget=budget):
                if budget is not None and decision.new_budget:
                    await store.insert_budget(conn, task_id, budget)
                elif decision.announce:
                    await store.mark_exhausted(conn, task_id)
                reason = f"{decision.reason}: {decision.detail}"
                await audit("refused", reason, decision.epsilon_after)
                await self._emit(conn, topics.PRIVACY, request, _refusal(request, decision))
                if decision.announce:
                    exhausted = PrivacyBudgetExhausted(
                        producer=PRODUCER,
                        round_id=request.round_id,
                        correlation_id=request.message_id,
                        task_id=task_id,
                        epsilon_spent=decision.epsilon_before,
                        epsilon_budget=decision.epsilon_budget,
                        detail=decision.detail,
                    )
                    await self._emit(conn, topics.EVENTS, request, exhausted)
                DECISIONS.labels("refused", decision.reason).inc()
                logger.info(
                    "task %s round %d attempt %d refused (%s): %s",
                    task_id,
                    request.round_number,
                    request.attempt,
                    decision.reason,
                    decision.detail,
                )

    async def _emit(
        self,
        conn: psycopg.AsyncConnection,
        base: str,
        request: PrivacySpendRequested,
        message: Envelope,
    ) -> None:
        await outbox.enqueue(
            conn,
            schema=store.SCHEMA,
            settings=self.context.kafka,
            base=base,
            key=str(request.task_id),
            message=message,
        )


def _approval(request: PrivacySpendRequested, decision: Approve) -> PrivacySpendApproved:
    budget = decision.budget
    release = decision.release
    return PrivacySpendApproved(
        producer=PRODUCER,
        round_id=request.round_id,
        correlation_id=request.message_id,
        task_id=request.task_id,
        round_number=request.round_number,
        attempt=request.attempt,
        approval_id=decision.approval_id,
        noise_multiplier=decision.release.noise_multiplier,
        sample_rate=decision.release.sample_rate,
        clip_norm=budget.clip_norm if release.clip_norm is None else release.clip_norm,
        epsilon_spent=decision.epsilon_after,
        epsilon_budget=budget.epsilon,
        delta=budget.delta,
        accountant=budget.accountant.value,
        update_noise_multiplier=release.update_noise_multiplier,
        count_noise_std=release.count_noise_std,
    )


def _refusal(request: PrivacySpendRequested, decision: Refuse) -> PrivacySpendRefused:
    return PrivacySpendRefused(
        producer=PRODUCER,
        round_id=request.round_id,
        correlation_id=request.message_id,
        task_id=request.task_id,
        round_number=request.round_number,
        attempt=request.attempt,
        reason=decision.reason,
        detail=decision.detail,
        epsilon_spent=decision.epsilon_before,
        epsilon_budget=decision.epsilon_budget,
    )


def build(context: ServiceContext) -> ServiceParts:
    return ServiceParts(handle=Privacy(context).handle)
