"""Slowing a run down when the model endpoint rate limits it.

A 429 (which the model client does not retry itself) does not fail the case:
the whole run holds off (for as long as the endpoint's Retry-After asked, or
an exponential, jittered backoff when it did not say), halves the number of
calls it makes at a time, and retries the case. Every answer lets one more
call back in, up to the evaluation's concurrency: additive increase,
multiplicative decrease, so the run settles near what the endpoint allows.

This limit is per run and per worker process. Several runs (or workers)
sharing one endpoint each back off on their own; a limit shared through
Redis would let them agree on one rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

# Backoff when the endpoint gives no Retry-After: 1, 2, 4 ... seconds, capped.
_FIRST_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 60.0
# A Retry-After longer than this is taken as this: the run checks back sooner
# rather than sleep for an hour on one header.
_MAX_RETRY_AFTER_S = 300.0


class Throttle:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.limit = concurrency
        self.in_flight = 0
        self.resume_at = 0.0
        self._pauses_in_a_row = 0
        # Since when every call has been rate limited; None after an answer.
        self._limited_since: float | None = None
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def slot(self, stopping: asyncio.Event) -> AsyncIterator[bool]:
        """Held around one model call: waits out a pause and for a free slot.
        Yields False, holding nothing, if the run starts stopping meanwhile."""
        while True:
            if stopping.is_set():
                yield False
                return
            wait_s = self.resume_at - time.monotonic()
            if wait_s <= 0 and self.in_flight < self.limit:
                break
            waits = {asyncio.ensure_future(self._changed.wait()),
                     asyncio.ensure_future(stopping.wait())}
            try:
                await asyncio.wait(waits, timeout=wait_s if wait_s > 0 else None,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        self.in_flight += 1
        try:
            yield True
        finally:
            self.in_flight -= 1
            self._notify()

    def _notify(self) -> None:
        # One event per change: everyone waiting on it wakes and looks again.
        self._changed.set()
        self._changed = asyncio.Event()

    def answered(self) -> None:
        """A call got an answer: let one more call in."""
        self._limited_since = None
        self._pauses_in_a_row = 0
        if self.limit < self.concurrency:
            self.limit += 1
            self._notify()

    def rate_limited(self, retry_after_s: float | None) -> float | None:
        """A call was rate limited. Returns the length of the pause this
        started, or None if the run was already holding off."""
        now = time.monotonic()
        if self._limited_since is None:
            self._limited_since = now
        if self.resume_at > now:
            return None
        # A Retry-After of 0 (or a date gone by) says nothing about how long
        # to wait; the backoff does.
        if retry_after_s is not None and retry_after_s > 0:
            wait_s = min(retry_after_s, _MAX_RETRY_AFTER_S)
        else:
            backoff = min(_FIRST_BACKOFF_S * 2 ** self._pauses_in_a_row,
                          _MAX_BACKOFF_S)
            wait_s = backoff * random.uniform(0.75, 1.0)
        self._pauses_in_a_row += 1
        self.limit = max(1, self.limit // 2)
        self.resume_at = now + wait_s
        return wait_s

    def limited_for_s(self) -> float:
        """How long every call has been rate limited, without one answer."""
        if self._limited_since is None:
            return 0.0
        return time.monotonic() - self._limited_since


async def sleep_unless_stopping(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if the run starts stopping meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
