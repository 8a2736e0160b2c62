"""The arq worker that runs evaluations (`assay worker`)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import redis.asyncio as aioredis
from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from app.jobs import queue
from app.jobs.evaluation import JobContext, run_evaluation
from app.llm.client import ModelClient
from app.settings import Settings
from app.store import db
from app.store import evaluations as evaluation_store

log = logging.getLogger(__name__)

# arq cuts a job off at its timeout and does not retry it; an evaluation of a
# million cases may rightly take days, so the queue never times a run out.
_RUN_TIMEOUT = datetime.timedelta(days=365)


def build_worker(settings: Settings, *, max_evaluations: int = 4,
                 handle_signals: bool = True, burst: bool = False) -> Worker:
    """An arq worker for this deployment's queue; `await worker.async_run()`."""

    async def run(ctx: dict[str, Any], evaluation_id: int, attempt: int) -> str:
        return await run_evaluation(ctx["job"], evaluation_id, attempt)

    async def startup(ctx: dict[str, Any]) -> None:
        pool = await db.create_pool(settings)
        await db.check_schema(pool)
        model_client = ModelClient.from_settings(settings, settings.model_base_url)
        ctx["job"] = JobContext(
            pool=pool, redis=aioredis.from_url(settings.redis_url),
            redis_prefix=settings.redis_prefix, model_client=model_client)
        log.info("worker ready: queue %s, model endpoint %s, database %s",
                 queue.queue_name(settings.redis_prefix), model_client.base_url,
                 settings.safe_database_url)
        await _requeue_unfinished(ctx["redis"], settings, pool)

    async def shutdown(ctx: dict[str, Any]) -> None:
        job: JobContext | None = ctx.get("job")
        if job is None:
            return
        await job.model_client.close()
        await job.redis.aclose()
        await job.pool.close()

    return Worker(
        functions=[func(run, name=queue.RUN_EVALUATION, timeout=_RUN_TIMEOUT)],
        queue_name=queue.queue_name(settings.redis_prefix),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=max_evaluations,
        job_timeout=_RUN_TIMEOUT,
        poll_delay=0.05,
        handle_signals=handle_signals,
        burst=burst,
        allow_abort_jobs=True,
    )


async def _requeue_unfinished(arq_redis: Any, settings: Settings, pool: Any) -> None:
    """Queue again every unfinished evaluation whose job Redis no longer has
    (Redis restarted and lost its queue). The job id is per attempt, so an
    evaluation whose job is still queued or running is left alone."""
    unfinished = await evaluation_store.unfinished_evaluations(pool)
    for evaluation_id, attempt in unfinished:
        if await queue.enqueue_evaluation(arq_redis, settings.redis_prefix,
                                          evaluation_id, attempt):
            log.warning("evaluation %s had no job on the queue; queued it again",
                        evaluation_id)
