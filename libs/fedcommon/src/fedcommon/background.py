"""Background loops (timers, the outbox relay, watchers) handle their errors one way everywhere.

Each error is classified (fedcommon.failures), logged and counted in
``fedengine_background_errors_total{job, kind}``; the loop goes on after a capped backoff. No
job swallows an error silently, and none dies of one unnoticed: a job that returns or raises
something other than an ``Exception`` ends the service loudly (fedcommon.service watches it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from fedcommon.backoff import Backoff as Backoff
from fedcommon.failures import Failure, classify, describe

logger = logging.getLogger(__name__)

JOB_ERRORS = Counter(
    "fedengine_background_errors_total", "Errors in background jobs", ["job", "kind"]
)

Step = Callable[[], Awaitable[object]]


async def run_step(job: str, step: Step) -> bool:
    """Run one step of ``job``; log and count an error instead of raising it. True on success."""
    try:
        await step()
    except Exception as exc:
        kind = classify(exc)
        JOB_ERRORS.labels(job, kind.value).inc()
        if kind == Failure.TRANSIENT:
            logger.warning("%s: dependency unavailable (%s); will retry", job, describe(exc))
        else:
            logger.exception("%s failed (%s); will retry", job, kind.value)
        return False
    return True


async def every(job: str, interval_s: float, step: Step, *, cap_s: float = 30.0) -> None:
    """Run ``step`` every ``interval_s`` seconds forever; back off while it keeps failing."""
    backoff = Backoff(first=interval_s, cap=max(interval_s, cap_s))
    delay = interval_s
    while True:
        await asyncio.sleep(delay)
        if await run_step(job, step):
            backoff.reset()
            delay = interval_s
        else:
            delay = backoff.next_delay()


async def until_done(job: str, step: Step, *, cap_s: float = 10.0) -> None:
    """Run ``step`` until it succeeds once (start-up work such as enrolment), backing off."""
    backoff = Backoff(cap=cap_s)
    while not await run_step(job, step):
        await asyncio.sleep(backoff.next_delay())
