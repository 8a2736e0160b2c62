"""The arq worker that runs evaluations (`assay worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from signal import Signals
from typing import Any

import redis.asyncio as aioredis
from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from app.jobs import queue, recovery
from app.jobs.evaluation import JobContext, run_evaluation, run_evaluation_part
from app.llm.client import ModelClient
from app.settings import Settings, mask_password
from app.store import db

log = logging.getLogger(__name__)

# arq cuts a job off at its timeout and does not retry it; an evaluation of a
# million cases may rightly take days, so the queue never times a run out.
_RUN_TIMEOUT = datetime.timedelta(days=365)


class _DrainingWorker(Worker):
    """On SIGTERM or SIGINT, arq stops taking jobs and gives running ones
    `job_completion_wait` seconds before cancelling them. An evaluation never
    ends by itself that soon, so tell the runs to drain: finish the calls in
    flight, store them and hand the rest back to the queue."""

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        job: JobContext | None = self.ctx.get("job")
        if job is not None:
            log.info("worker stopping on %s: draining %d run(s), at most %.0fs",
                     Signals(signum).name, len(self.tasks),
                     self._job_completion_wait)
            job.draining.set()
        super().handle_sig_wait_for_completion(signum)

    async def _sleep_until_tasks_complete(self) -> None:
        # arq waits for its job list to empty, which only its poll loop does;
        # a worker whose Redis is gone polls no more and would wait out the
        # whole drain time for runs long finished.
        while not all(task.done() for task in self.tasks.values()):
            await asyncio.sleep(0.1)


def build_worker(settings: Settings, *, max_evaluations: int = 4,
                 handle_signals: bool = True, burst: bool = False) -> Worker:
    """An arq worker for this deployment's queue; `await worker.async_run()`."""

    async def run(ctx: dict[str, Any], evaluation_id: int, attempt: int) -> str:
        return await run_evaluation(ctx["job"], evaluation_id, attempt)

    async def help_run(ctx: dict[str, Any], evaluation_id: int, attempt: int) -> str:
        return await run_evaluation_part(ctx["job"], evaluation_id, attempt,
                                         tries=ctx["job_try"])

    async def startup(ctx: dict[str, Any]) -> None:
        pool = await db.create_pool(settings, application_name="assay-worker")
        await db.check_schema(pool)
        model_client = ModelClient.from_settings(settings, settings.model_base_url)
        ctx["job"] = JobContext(
            pool=pool, redis=aioredis.from_url(settings.redis_url),
            redis_prefix=settings.redis_prefix, model_client=model_client,
            database_url=settings.database_url,
            rate_limit_max_wait_s=settings.rate_limit_max_wait_s,
            arq=ctx["redis"], model_rpm=settings.model_rpm,
            model_max_calls=settings.model_max_calls,
            part_cases=settings.part_cases,
            workers_per_evaluation=settings.workers_per_evaluation)
        ctx["sweeper"] = asyncio.create_task(recovery.sweep_forever(
            pool, ctx["redis"], settings.database_url, settings.redis_prefix,
            settings.recovery_interval_s, settings.idempotency_key_hours),
            name="recovery-sweep")
        log.info("worker ready: queue %s, model endpoint %s, database %s",
                 queue.queue_name(settings.redis_prefix),
                 mask_password(model_client.base_url), settings.safe_database_url)
        if settings.model_rpm or settings.model_max_calls:
            log.info("model endpoint limits shared by all workers: %s requests a"
                     " minute, %s calls at once", settings.model_rpm or "any",
                     settings.model_max_calls or "any")

    async def shutdown(ctx: dict[str, Any]) -> None:
        sweeper: asyncio.Task[None] | None = ctx.get("sweeper")
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        job: JobContext | None = ctx.get("job")
        if job is None:
            return
        await job.model_client.close()
        await job.redis.aclose()
        await job.pool.close()

    return _DrainingWorker(
        functions=[func(run, name=queue.RUN_EVALUATION, timeout=_RUN_TIMEOUT),
                   func(help_run, name=queue.RUN_EVALUATION_PART,
                        timeout=_RUN_TIMEOUT)],
        queue_name=queue.queue_name(settings.redis_prefix),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=max_evaluations,
        job_timeout=_RUN_TIMEOUT,
        poll_delay=0.05,
        handle_signals=handle_signals,
        # Past this, runs still draining are cancelled and arq hands their
        # jobs back as they are; calls in flight then are asked again.
        job_completion_wait=settings.drain_s,
        burst=burst,
        # arq counts every hand-back on SIGTERM as a try; a run resumes where
        # it stopped, so rolling restarts must not use up its tries.
        max_tries=1000,
    )
