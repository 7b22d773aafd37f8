"""The health checks' bounds and sharing, with checks that are plain coroutines (no servers)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka.errors import KafkaConnectionError, NoBrokersAvailable

from fedengine_gateway import health
from fedengine_gateway.health import CheckResult, Dependency


async def _fine() -> None:
    return None


async def _never() -> None:
    await asyncio.Event().wait()


async def _refused() -> None:
    raise ConnectionRefusedError("connection to 10.0.0.7:5432 refused (secret host)")


async def test_a_check_that_answers_is_up_and_timed() -> None:
    result = await health.run_check(_fine, timeout_s=1.0)
    assert result.up and result.error is None and 0 <= result.seconds < 1.0


async def test_a_check_that_never_answers_is_down_at_its_bound() -> None:
    result = await health.run_check(_never, timeout_s=0.05)
    assert (result.up, result.error) == (False, "no answer within 0.05 s")
    assert 0.05 <= result.seconds < 1.0


async def test_a_check_slow_to_clean_up_after_its_bound_does_not_hold_the_answer() -> None:
    # Like psycopg cancelled in a query to a frozen server: it tries to cancel it there first.
    cleaned_up = asyncio.Event()

    async def slow_to_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.3)
            cleaned_up.set()

    began = time.monotonic()
    result = await health.run_check(slow_to_cancel, timeout_s=0.05)
    took = time.monotonic() - began

    assert not result.up and took < 0.2
    await asyncio.wait_for(cleaned_up.wait(), timeout=2)  # left to finish, not dropped


async def test_a_failing_check_is_down_naming_the_kind_of_error_only() -> None:
    result = await health.run_check(_refused, timeout_s=1.0)
    # The body that shows it needs no token: no address, no server text.
    assert (result.up, result.error) == (False, "ConnectionRefusedError")


async def test_not_ready_says_its_fixed_reason() -> None:
    async def missing() -> None:
        raise health.NotReady("a command topic is missing")

    result = await health.run_check(missing, timeout_s=1.0)
    assert result.error == "a command topic is missing"


def test_down_lists_what_is_down_in_a_fixed_order() -> None:
    up, down = CheckResult(True, 0.0), CheckResult(False, 1.0, "x")
    assert health.down({Dependency.BROKER: down, Dependency.DATABASE: down}) == [
        Dependency.DATABASE,
        Dependency.BROKER,
    ]
    assert health.down({Dependency.BROKER: up, Dependency.DATABASE: up}) == []


async def test_callers_at_the_same_time_share_one_check_per_dependency() -> None:
    calls = {Dependency.DATABASE: 0, Dependency.BROKER: 0}
    release = asyncio.Event()

    def counted(dependency: Dependency) -> health.Check:
        async def check() -> None:
            calls[dependency] += 1
            await release.wait()

        return check

    prober = health.Prober({d: counted(d) for d in Dependency}, timeout_s=5.0)
    waiting = [asyncio.create_task(prober.check_all()) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    reports = await asyncio.gather(*waiting)

    assert calls == {Dependency.DATABASE: 1, Dependency.BROKER: 1}
    assert all(r[Dependency.BROKER].up for r in reports)
    await prober.check(Dependency.BROKER)  # a later caller gets a fresh check
    assert calls[Dependency.BROKER] == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_check() -> None:
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    prober = health.Prober({Dependency.DATABASE: slow, Dependency.BROKER: _fine}, timeout_s=5.0)
    impatient = asyncio.create_task(prober.check(Dependency.DATABASE))
    patient = asyncio.create_task(prober.check(Dependency.DATABASE))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()

    assert (await patient).up


async def test_each_change_of_state_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    state = {"up": False}

    async def flapping() -> None:
        if not state["up"]:
            raise KafkaConnectionError()

    prober = health.Prober({Dependency.DATABASE: _fine, Dependency.BROKER: flapping}, timeout_s=1)
    with caplog.at_level(logging.INFO, logger=health.__name__):
        for up in (False, False, True, True):
            state["up"] = up
            await prober.check(Dependency.BROKER)

    assert [r.getMessage() for r in caplog.records] == [
        "broker is down: KafkaConnectionError",
        "broker answers again",
    ]


async def test_the_first_broker_to_answer_wins_and_failures_are_skipped() -> None:
    async def late() -> str:
        await asyncio.sleep(0.05)
        return "late"

    async def refused() -> str:
        raise KafkaConnectionError()

    assert await health._first_answer([late(), refused()]) == "late"


async def test_no_broker_answering_raises_the_last_failure_and_none_known_is_its_own_error() -> (
    None
):
    async def refused() -> str:
        raise KafkaConnectionError()

    with pytest.raises(KafkaConnectionError):
        await health._first_answer([refused(), refused()])
    with pytest.raises(NoBrokersAvailable):
        await health._first_answer([])
