"""Finding unfinished evaluations that no worker will run, and queueing them.

PostgreSQL is the source of truth; the queue in Redis can lose a job (Redis
restarted) or keep one that will never run again (its worker was killed, and
arq keeps it marked as running for the job's whole timeout). Every worker
sweeps now and then, and for each QUEUED or IN_PROGRESS evaluation decides:

- its job is still on the queue, waiting: leave it;
- its job is marked running and some worker holds the evaluation's run lock,
  or takes it within a moment (arq marks a job running just before the job
  takes the lock): leave it;
- otherwise (no job at all, a finished job, or a running mark with nobody
  behind it): start a new attempt with a job of its own. The run resumes
  where the stored results stop, so nothing is lost or done twice.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.exceptions import RedisError

from app.jobs import queue
from app.store import evaluations as evaluation_store
from app.store import idempotency, run_locks

log = logging.getLogger(__name__)

# An evaluation younger than this may be between its INSERT and its enqueue.
_GRACE_S = 10.0
# How long a worker may take from arq marking a job running to holding the
# run's lock; a running mark whose lock is still free after this is a dead
# worker's.
_PICKUP_S = 1.0


async def sweep(pool: asyncpg.Pool, arq: ArqRedis, database_url: str,
                prefix: str) -> int:
    """One pass over the unfinished evaluations; how many were queued again."""
    orphans: list[tuple[int, int, str]] = []
    any_marked_running = False
    for evaluation_id, attempt in await evaluation_store.unfinished_evaluations(
            pool, prefix, older_than_s=_GRACE_S):
        job_id = queue.job_id(prefix, evaluation_id, attempt)
        marked_running = await arq.exists(in_progress_key_prefix + job_id)
        if not marked_running and await arq.exists(job_key_prefix + job_id):
            continue  # waiting on the queue
        if marked_running and not await _lock_is_free(database_url, evaluation_id):
            continue  # a live worker is running it
        any_marked_running = any_marked_running or marked_running
        orphans.append((evaluation_id, attempt, job_id))

    # A worker that picked a job up just now has not taken its lock yet: give
    # every running mark that moment before calling it a dead worker's. The
    # lock is looked at again below, while the new attempt is started.
    if any_marked_running:
        await asyncio.sleep(_PICKUP_S)

    requeued = 0
    for evaluation_id, attempt, job_id in orphans:
        if await _queue_again(pool, arq, database_url, prefix, evaluation_id,
                              attempt, job_id):
            requeued += 1
    return requeued


async def _lock_is_free(database_url: str, evaluation_id: int) -> bool:
    async with run_locks.run_lock(database_url, evaluation_id) as lock:
        return lock.held


async def _queue_again(pool: asyncpg.Pool, arq: ArqRedis, database_url: str,
                       prefix: str, evaluation_id: int, attempt: int,
                       job_id: str) -> bool:
    """Start a new attempt of an evaluation nobody runs; False if somebody
    does after all, or it finished, or another sweep got there first."""
    async with run_locks.run_lock(database_url, evaluation_id) as lock:
        if not lock.held:
            return False  # a live worker is running it
        new_attempt = await evaluation_store.next_attempt(pool, evaluation_id,
                                                          attempt)
        if new_attempt is not None:
            await _forget_job(arq, prefix, job_id)
    if new_attempt is None:
        return False
    await queue.enqueue_evaluation(arq, prefix, evaluation_id, new_attempt)
    log.warning("evaluation %s had no live job (attempt %s); queued attempt %s",
                evaluation_id, attempt, new_attempt)
    return True


async def _forget_job(arq: ArqRedis, prefix: str, job_id: str) -> None:
    # A dead worker's job stays on the queue marked as running for the job's
    # whole timeout; arq reads only the head of the queue on each poll, so
    # enough such leftovers would keep every new job from being picked up.
    await arq.zrem(queue.queue_name(prefix), job_id)
    await arq.delete(in_progress_key_prefix + job_id, job_key_prefix + job_id,
                     retry_key_prefix + job_id)


async def sweep_forever(pool: asyncpg.Pool, arq: ArqRedis, database_url: str,
                        prefix: str, interval_s: float,
                        idempotency_key_hours: float = 24.0) -> None:
    """Sweep every `interval_s` until cancelled; failures are logged and the
    next pass tries again. Each pass also forgets expired idempotency keys
    (an indexed delete), so that table holds about a day of creates."""
    while True:
        try:
            await sweep(pool, arq, database_url, prefix)
            forgotten = await idempotency.delete_expired(pool,
                                                         idempotency_key_hours)
            if forgotten:
                log.info("forgot %d expired idempotency key(s)", forgotten)
        except (RedisError, OSError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            log.warning("recovery sweep failed, trying again in %.0fs: %s",
                        interval_s, exc)
        except Exception:
            # A bug here must not end recovery for the life of the worker.
            log.exception("recovery sweep failed unexpectedly; trying again in"
                          " %.0fs", interval_s)
        await asyncio.sleep(interval_s)
