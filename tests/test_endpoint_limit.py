"""The model endpoint's limits, shared through the real Redis by several
workers (each an EndpointLimit with a Redis connection of its own)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest_asyncio
from redis.asyncio import Redis

from app.jobs.endpoint_limit import EndpointLimit
from tests.conftest import REDIS_URL
from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.fake_model import fake_model
from tests.stack import free_port, running_stack


@pytest_asyncio.fixture
async def workers(redis_prefix):
    """Four workers' views of one endpoint; `make(**limits)` builds them."""
    clients: list[Redis] = []
    prefix = f"{redis_prefix}-limit-{uuid.uuid4().hex[:6]}"

    def make(count: int = 4, **limits) -> list[EndpointLimit]:
        made = []
        for _ in range(count):
            clients.append(Redis.from_url(REDIS_URL))
            made.append(EndpointLimit(clients[-1], prefix, "http://model.test/v1",
                                      "m", lease_s=limits.get("lease_s", 30.0),
                                      requests_per_minute=limits.get("rpm"),
                                      max_calls=limits.get("max_calls")))
        return made

    yield make
    for client in clients:
        await client.aclose()


async def _calls_in(limits: list[EndpointLimit], seconds: float) -> int:
    """How many calls all of them together are let make in `seconds`."""
    stopping = asyncio.Event()
    made = 0

    async def keep_calling(limit: EndpointLimit) -> None:
        nonlocal made
        while not stopping.is_set():
            async with limit.call(stopping) as permitted:
                if permitted:
                    made += 1

    tasks = [asyncio.create_task(keep_calling(limit)) for limit in limits]
    await asyncio.sleep(seconds)
    stopping.set()
    await asyncio.gather(*tasks)
    return made


async def test_workers_together_keep_to_the_requests_a_minute(workers):
    # 600 a minute: 10 a second, up to 10 at once.
    made = await _calls_in(workers(rpm=600), 1.5)

    assert 10 <= made <= 10 + 15 + 1


async def test_a_429_halves_the_rate_for_every_worker_once_a_second(workers):
    first, *others = workers(rpm=600)

    await first.rate_limited()
    await others[0].rate_limited()  # the same overload, seen by another worker
    made = await _calls_in(others, 2.0)

    # Up to 10 at once, then half of 10 a second (recovering by a sixtieth
    # a second): about 10 + 2 x 5.3, where the full rate would allow 30.
    assert 15 <= made <= 22


async def test_no_more_calls_at_once_than_allowed_across_workers(workers):
    limits = workers(max_calls=3)
    in_flight = most = done = 0
    stopping = asyncio.Event()

    async def call(limit: EndpointLimit) -> None:
        nonlocal in_flight, most, done
        async with limit.call(stopping) as permitted:
            assert permitted
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            done += 1

    await asyncio.gather(*(call(limit) for limit in limits for _ in range(5)))

    assert most == 3 and done == 20


async def test_a_lease_of_a_worker_that_died_expires(workers):
    dead, alive = workers(2, max_calls=1, lease_s=0.5)
    stopping = asyncio.Event()
    never_released = dead.call(stopping)
    assert await never_released.__aenter__()  # and then the worker died

    started = time.monotonic()
    async with alive.call(stopping) as permitted:
        waited = time.monotonic() - started

    assert permitted and 0.3 < waited < 5


async def test_a_run_that_stops_while_waiting_gets_no_call(workers):
    holder, waiter = workers(2, max_calls=1)
    stopping = asyncio.Event()
    async with holder.call(asyncio.Event()):
        asyncio.get_running_loop().call_later(0.1, stopping.set)
        async with waiter.call(stopping) as permitted:
            assert not permitted


async def test_without_limits_redis_is_not_touched(workers):
    [limit] = workers(1)
    unreachable = EndpointLimit(Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"),
                                "x", "u", "m", requests_per_minute=None,
                                max_calls=None, lease_s=1)

    for each in (limit, unreachable):
        async with each.call(asyncio.Event()) as permitted:
            assert permitted


async def test_with_redis_unreachable_calls_go_ahead_unlimited(caplog):
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limit = EndpointLimit(client, "x", "u", "m", requests_per_minute=60,
                          max_calls=1, lease_s=1)
    try:
        async with limit.call(asyncio.Event()) as permitted:
            assert permitted
    finally:
        await client.aclose()

    assert "calling without them" in caplog.text


async def test_a_worker_run_keeps_to_the_shared_limits_and_reports_429s(settings):
    async with fake_model() as model:
        limited = settings.replace(
            redis_prefix=f"{settings.redis_prefix}-limited",
            openai_base_url=model.base_url, model_rpm=6000, model_max_calls=2)
        model.rate_limit(2, retry_after="0")
        async with running_stack(limited) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(12))
            created = await create_evaluation(stack, test_set["id"], concurrency=4)
            evaluation = await stack.wait_for_status(created["id"], "COMPLETED")
            redis = Redis.from_url(REDIS_URL)
            try:
                [rate_key] = [key async for key in redis.scan_iter(
                    f"{limited.redis_prefix}:endpoint:*:rate")]
                factor = float(await redis.hget(rate_key, "factor"))
            finally:
                await redis.aclose()

    assert evaluation["completedCases"] == 12 and evaluation["failedCases"] == 0
    assert factor < 1, "the 429s slowed every worker down"
    assert len(model.calls) == 12 + 2
