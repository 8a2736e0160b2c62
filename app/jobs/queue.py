"""Putting evaluation runs on the arq queue (used by the API and the worker)."""

from __future__ import annotations

import datetime
import logging

from arq.connections import ArqRedis, RedisSettings, create_pool

log = logging.getLogger(__name__)

RUN_EVALUATION = "run_evaluation"
RUN_EVALUATION_PART = "run_evaluation_part"
# arq drops a job that has not started within its expiry (24 h by default);
# a long backlog of queued evaluations must still run.
_JOB_EXPIRES = datetime.timedelta(days=30)


def queue_name(prefix: str) -> str:
    return f"{prefix}:queue"


def job_id(prefix: str, evaluation_id: int, attempt: int) -> str:
    """One job id per attempt: enqueueing an attempt twice is a no-op."""
    return f"{prefix}:evaluation:{evaluation_id}:{attempt}"


async def connect(redis_url: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(redis_url))


async def enqueue_helpers(arq: ArqRedis, prefix: str, evaluation_id: int,
                          attempt: int, count: int) -> None:
    """Queue `count` jobs that help an attempt's lead run its parts, for
    other workers to take."""
    for helper in range(1, count + 1):
        await arq.enqueue_job(
            RUN_EVALUATION_PART, evaluation_id, attempt,
            _job_id=f"{job_id(prefix, evaluation_id, attempt)}:helper:{helper}",
            _queue_name=queue_name(prefix), _expires=_JOB_EXPIRES,
        )


async def enqueue_evaluation(arq: ArqRedis, prefix: str, evaluation_id: int,
                             attempt: int) -> bool:
    """Queue an evaluation's run; False if that attempt was already queued."""
    job = await arq.enqueue_job(
        RUN_EVALUATION, evaluation_id, attempt,
        _job_id=job_id(prefix, evaluation_id, attempt),
        _queue_name=queue_name(prefix), _expires=_JOB_EXPIRES,
    )
    if job is None:
        log.info("evaluation %s attempt %s was already queued", evaluation_id,
                 attempt)
    return job is not None
