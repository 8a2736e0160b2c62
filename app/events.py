"""Progress events through Redis pub/sub: publishing, and one hub per process.

Pub/sub keeps nothing, so it is only the fast path: every event is stored in
PostgreSQL before it is published (app/store/evaluations.py), and followers
fill any gap from there (app/progress.py). A lost message costs latency, never
an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.store.rows import ProgressEventRow

log = logging.getLogger(__name__)

# A follower this far behind is cut loose and catches up from the store,
# instead of letting the process buffer without bound.
LISTENER_QUEUE_SIZE = 10_000


def channel_name(prefix: str, evaluation_id: int) -> str:
    return f"{prefix}:progress:{evaluation_id}"


async def publish(
    redis: aioredis.Redis, prefix: str, events: Sequence[ProgressEventRow]
) -> None:
    """Announce stored events; a Redis failure is logged, not raised, because
    the events are already stored and followers will find them there."""
    if not events:
        return
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.publish(channel_name(prefix, event.evaluation_id),
                     json.dumps(event.to_json()))
    try:
        await pipe.execute()
    except RedisError as exc:
        log.warning("could not publish %d progress event(s) of evaluation %s: %s;"
                    " followers will read them from the database",
                    len(events), events[0].evaluation_id, exc)


class Listener:
    """The events of one evaluation as they arrive at this process."""

    def __init__(self, evaluation_id: int) -> None:
        self.evaluation_id = evaluation_id
        self.queue: asyncio.Queue[ProgressEventRow] = asyncio.Queue(
            LISTENER_QUEUE_SIZE)
        # Set when a message may have been missed (queue full, reconnect);
        # the follower then reads the store instead of trusting the queue.
        self.missed = False

    def deliver(self, event: ProgressEventRow) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.missed = True


class ProgressHub:
    """One pub/sub connection per process, fanned out to in-memory listeners.

    The hub pattern-subscribes to every progress channel once, at start-up,
    and waits for Redis to confirm; a follower that registers afterwards can
    therefore never miss a message published after it registered.
    """

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._redis_url = redis_url
        self._pattern = channel_name(prefix, 0)[:-1] + "*"
        self._listeners: dict[int, set[Listener]] = {}
        self._redis: aioredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._redis = aioredis.from_url(self._redis_url)
        self._reader = asyncio.create_task(self._read_forever(), name="progress-hub")
        await asyncio.wait_for(self.connected.wait(), timeout=10)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._redis is not None:
            await self._redis.aclose()

    @contextlib.contextmanager
    def listen(self, evaluation_id: int) -> Iterator[Listener]:
        listener = Listener(evaluation_id)
        self._listeners.setdefault(evaluation_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(evaluation_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[evaluation_id]

    async def _read_forever(self) -> None:
        delay_s = 0.1
        while True:
            try:
                await self._read_until_disconnected()
            except (RedisError, OSError) as exc:
                log.warning("progress hub lost Redis (%s); reconnecting", exc)
            except Exception:
                # Followers fall back to the store meanwhile; keep the hub up.
                log.exception("progress hub failed; reconnecting")
            # Back off only while reconnecting keeps failing.
            delay_s = 0.1 if self.connected.is_set() else min(delay_s * 2, 5.0)
            self.connected.clear()
            self._mark_all_missed()
            await asyncio.sleep(delay_s)

    async def _read_until_disconnected(self) -> None:
        assert self._redis is not None
        async with self._redis.pubsub() as pubsub:
            await pubsub.psubscribe(self._pattern)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    # Anything published while we were away is in the store.
                    self._mark_all_missed()
                    self.connected.set()
                elif message["type"] == "pmessage":
                    self._dispatch(message["channel"], message["data"])

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        evaluation_id = channel.rpartition(b":")[2]
        if not evaluation_id.isdigit() or int(evaluation_id) not in self._listeners:
            return  # nobody in this process follows it: skip decoding
        try:
            event = ProgressEventRow.from_json(json.loads(data))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignored a malformed progress message: %s", exc)
            return
        for listener in self._listeners.get(event.evaluation_id, ()):
            listener.deliver(event)

    def _mark_all_missed(self) -> None:
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.missed = True
