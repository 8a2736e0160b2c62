"""Limits on one model endpoint shared by every worker: requests per minute
and calls in flight, kept in Redis so that a fleet of workers together stays
within what the provider allows.

- Requests per minute (ASSAY_MODEL_RPM) are paced evenly (a generic cell
  rate algorithm): each call takes the next free moment on the endpoint's
  schedule, one interval of 60/rpm seconds after the previous one, with up
  to a second's worth of calls let through at once.
- Calls in flight (ASSAY_MODEL_MAX_CALLS) are leases in a sorted set, each
  ending when its call's own deadline would: a worker that dies mid-call
  gives its leases back when they expire.
- A 429 from the endpoint halves the rate every worker keeps to (at most
  once a second, since a fleet sees one overload as many 429s at once); it
  climbs back linearly to the rate set over RECOVERY_S.

An endpoint is a model at a base URL: providers limit each model apart.
With neither limit set nothing touches Redis. If Redis cannot be reached the
call goes ahead unlimited (logged): the run's own throttle still backs off on
429s, and Redis being down stops the queue anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.jobs.throttle import sleep_unless_stopping

log = logging.getLogger(__name__)

RECOVERY_S = 60.0
MIN_RATE_FACTOR = 0.05
_POLL_S = 0.02
_IDLE_EXPIRY_S = 3600

# Takes the endpoint's next moment if it is due: returns "0" (go now) or the
# seconds to wait. Lua numbers come back from Redis as integers, so as text.
_TAKE_MOMENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, recovery, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tat', 'factor', 'cut_at')
local tat = math.max(tonumber(state[1]) or now, now)
local factor = tonumber(state[2]) or 1
local cut_at = tonumber(state[3]) or 0
factor = math.min(1, factor + (now - cut_at) / recovery)
local interval = 60 / (rpm * factor)
local wait = tat - now - (burst - 1) * interval
if wait > 0 then return tostring(wait) end
redis.call('HSET', KEYS[1], 'tat', tat + interval)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return '0'
"""

# Halves the rate factor (as recovered so far), unless it was cut under a
# second ago; returns the new factor.
_CUT_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local recovery, floor = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'factor', 'cut_at')
local cut_at = tonumber(state[2]) or 0
local factor = math.min(1, (tonumber(state[1]) or 1) + (now - cut_at) / recovery)
if now - cut_at >= 1 then
  factor = math.max(floor, factor / 2)
  redis.call('HSET', KEYS[1], 'factor', factor, 'cut_at', now)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return tostring(factor)
"""

# Takes a lease on one of the endpoint's calls if one is free: 1 or 0.
_TAKE_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 60)
return 1
"""


class EndpointLimit:
    """The shared limits of one model endpoint, as one worker uses them."""

    def __init__(self, redis: Redis, redis_prefix: str, base_url: str, model: str,
                 *, requests_per_minute: int | None, max_calls: int | None,
                 lease_s: float) -> None:
        self.requests_per_minute = requests_per_minute
        self.max_calls = max_calls
        self._lease_s = lease_s
        self._redis = redis
        endpoint = hashlib.sha256(f"{base_url}\n{model}".encode()).hexdigest()[:16]
        self._rate_key = f"{redis_prefix}:endpoint:{endpoint}:rate"
        self._calls_key = f"{redis_prefix}:endpoint:{endpoint}:calls"
        self._take_moment = redis.register_script(_TAKE_MOMENT)
        self._cut_rate = redis.register_script(_CUT_RATE)
        self._take_lease = redis.register_script(_TAKE_LEASE)
        self._warned_at = 0.0

    @property
    def is_set(self) -> bool:
        return self.requests_per_minute is not None or self.max_calls is not None

    @contextlib.asynccontextmanager
    async def call(self, stopping: asyncio.Event) -> AsyncIterator[bool]:
        """Wait for the endpoint's next free moment and a free call; yields
        False instead if the run starts stopping meanwhile."""
        if not self.is_set:
            yield True
            return
        if not await self._wait_for_moment(stopping):
            yield False
            return
        holder = await self._wait_for_lease(stopping)
        if holder is None:
            yield False
            return
        try:
            yield True
        finally:
            if holder:
                await self._unless_redis_fails(self._redis.zrem(self._calls_key,
                                                                holder))

    async def rate_limited(self) -> None:
        """The endpoint answered 429: every worker slows down."""
        if self.requests_per_minute is None:
            return
        factor = await self._unless_redis_fails(self._cut_rate(
            keys=[self._rate_key],
            args=[RECOVERY_S, MIN_RATE_FACTOR, _IDLE_EXPIRY_S]))
        if factor is not None:
            log.info("model endpoint rate limited: all workers now keep to %.0f"
                     " requests a minute", self.requests_per_minute * float(factor))

    async def _wait_for_moment(self, stopping: asyncio.Event) -> bool:
        if self.requests_per_minute is None:
            return True
        burst = max(1, self.requests_per_minute // 60)
        while not stopping.is_set():
            wait = await self._unless_redis_fails(self._take_moment(
                keys=[self._rate_key],
                args=[self.requests_per_minute, RECOVERY_S, burst, _IDLE_EXPIRY_S]))
            if wait is None or float(wait) <= 0:
                return True
            await sleep_unless_stopping(stopping, float(wait))
        return False

    async def _wait_for_lease(self, stopping: asyncio.Event) -> str | None:
        """The lease's holder id ("" when no lease is needed or Redis is
        unreachable); None if the run started stopping."""
        if self.max_calls is None:
            return ""
        holder = uuid.uuid4().hex
        while not stopping.is_set():
            taken = await self._unless_redis_fails(self._take_lease(
                keys=[self._calls_key], args=[self.max_calls, holder, self._lease_s]))
            if taken is None:
                return ""
            if int(taken):
                return holder
            # Jittered, so that workers waiting together do not ask together.
            await sleep_unless_stopping(stopping, _POLL_S * (0.5 + random.random()))
        return None

    async def _unless_redis_fails(self, step):
        try:
            return await step
        except (RedisError, OSError) as exc:
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("cannot reach Redis for the model endpoint's shared"
                            " limits; calling without them: %s", exc)
            return None
