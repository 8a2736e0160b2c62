"""Finding unfinished evaluations that no worker will run, and queueing them.

PostgreSQL is the source of truth; the queue in Redis can lose a job (Redis
restarted) or keep one that will never run again (its worker was killed, and
arq keeps it marked as running for the job's whole timeout). Every worker
sweeps now and then, and for each QUEUED or IN_PROGRESS evaluation decides:

- its job is still on the queue, waiting: leave it;
- its job is marked running and some worker holds the evaluation's run lock:
  leave it;
- otherwise (no job at all, a finished job, or a running mark with nobody
  behind it): start a new attempt with a job of its own. The run resumes
  where the stored results stop, so nothing is lost or done twice.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.exceptions import RedisError

from app.jobs import queue
from app.store import evaluations as evaluation_store
from app.store import run_locks

log = logging.getLogger(__name__)

# An evaluation younger than this may be between its INSERT and its enqueue.
_GRACE_S = 10.0


async def sweep(pool: asyncpg.Pool, arq: ArqRedis, database_url: str,
                prefix: str) -> int:
    """One pass over the unfinished evaluations; how many were queued again."""
    requeued = 0
    for evaluation_id, attempt in await evaluation_store.unfinished_evaluations(
            pool, older_than_s=_GRACE_S):
        job_id = queue.job_id(prefix, evaluation_id, attempt)
        if await arq.exists(job_key_prefix + job_id) and not await arq.exists(
                in_progress_key_prefix + job_id):
            continue  # waiting on the queue
        async with run_locks.run_lock(database_url, evaluation_id) as lock:
            if not lock.held:
                continue  # a live worker is running it
            new_attempt = await evaluation_store.next_attempt(pool, evaluation_id,
                                                              attempt)
            if new_attempt is not None:
                await _forget_job(arq, prefix, job_id)
        if new_attempt is None:
            continue  # finished meanwhile, or another sweep got there first
        await queue.enqueue_evaluation(arq, prefix, evaluation_id, new_attempt)
        log.warning("evaluation %s had no live job (attempt %s); queued attempt %s",
                    evaluation_id, attempt, new_attempt)
        requeued += 1
    return requeued


async def _forget_job(arq: ArqRedis, prefix: str, job_id: str) -> None:
    # A dead worker's job stays on the queue marked as running for the job's
    # whole timeout; arq reads only the head of the queue on each poll, so
    # enough such leftovers would keep every new job from being picked up.
    await arq.zrem(queue.queue_name(prefix), job_id)
    await arq.delete(in_progress_key_prefix + job_id, job_key_prefix + job_id)


async def sweep_forever(pool: asyncpg.Pool, arq: ArqRedis, database_url: str,
                        prefix: str, interval_s: float) -> None:
    """Sweep every `interval_s` until cancelled; failures are logged and the
    next pass tries again."""
    while True:
        try:
            await sweep(pool, arq, database_url, prefix)
        except (RedisError, OSError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            log.warning("recovery sweep failed, trying again in %.0fs: %s",
                        interval_s, exc)
        except Exception:
            # A bug here must not end recovery for the life of the worker.
            log.exception("recovery sweep failed unexpectedly; trying again in"
                          " %.0fs", interval_s)
        await asyncio.sleep(interval_s)
