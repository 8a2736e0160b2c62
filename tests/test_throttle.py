"""The run's rate-limit throttle on its own: pauses, halving, recovery."""

from __future__ import annotations

import asyncio
import time

from app.jobs.throttle import Throttle


async def test_a_retry_after_of_zero_gets_the_backoff_instead():
    throttle = Throttle(concurrency=8)

    pause_s = throttle.rate_limited(0.0)

    assert 0.75 <= pause_s <= 1.0
    assert throttle.limit == 4


async def test_pauses_halve_the_calls_and_answers_let_them_back():
    throttle = Throttle(concurrency=8)
    throttle.rate_limited(0.05)
    time.sleep(0.06)
    throttle.rate_limited(0.05)
    assert throttle.limit == 2
    for _ in range(10):
        throttle.answered()
    assert throttle.limit == 8


async def test_a_stopping_run_leaves_a_pause_at_once():
    throttle = Throttle(concurrency=2)
    throttle.rate_limited(60)
    stopping = asyncio.Event()

    async def ask() -> bool:
        async with throttle.slot(stopping) as free:
            return free

    waiting = asyncio.create_task(ask())
    await asyncio.sleep(0.05)
    stopping.set()

    assert await asyncio.wait_for(waiting, 1) is False
    assert throttle.in_flight == 0
