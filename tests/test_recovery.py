"""Workers that die or restart mid-run: nothing lost, nothing doubled.

The workers here are real `assay worker` processes, killed with real signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest

from app.jobs.evaluation import JobContext, run_evaluation
from app.llm.client import ModelClient
from app.llm.simulator import SimulatorConfig
from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.stack import free_port, running_stack, simulator
from tests.test_progress import assert_contiguous, subscribe

REPO = Path(__file__).resolve().parents[1]


def start_worker(settings, model_url: str, log: IO[bytes] | None = None,
                 ) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": settings.database_url,
           "REDIS_URL": settings.redis_url,
           "ASSAY_REDIS_PREFIX": settings.redis_prefix,
           "OPENAI_BASE_URL": model_url, "ASSAY_RECOVERY_INTERVAL_S": "1"}
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=log or subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def worker_process(settings, model_url: str,
                         ) -> AsyncIterator[subprocess.Popen]:
    """An `assay worker` process, stopped on leaving if a test has not. Its
    log is kept in the temporary folder (assay-test-workers/), to explain a
    failure."""
    log_dir = Path(tempfile.gettempdir()) / "assay-test-workers"
    log_dir.mkdir(exist_ok=True)
    log = open(log_dir / f"{settings.redis_prefix}.log", "ab")
    worker = start_worker(settings, model_url, log)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.terminate()
            # The worker drains its calls in flight, which the simulator in
            # this process must be free to answer: wait without blocking.
            if await exit_code(worker, timeout_s=60) is None:
                worker.kill()
                worker.wait()
        log.close()


async def exit_code(process: subprocess.Popen, timeout_s: float) -> int | None:
    """The process's exit code once it ends, or None if it is still running
    after `timeout_s`; the event loop goes on meanwhile."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return process.returncode


async def start_run(stack, num_cases: int) -> str:
    """A new evaluation of `num_cases` cases, two model calls at a time."""
    test_set = await create_test_set(stack, arithmetic_cases(num_cases))
    return (await create_evaluation(stack, test_set["id"], concurrency=2))["id"]


async def completed_cases(stack, evaluation_id: str) -> int:
    data = await stack.query("query($id: ID!) { evaluation(id: $id) {"
                             " completedCases } }", id=evaluation_id)
    return data["evaluation"]["completedCases"]


async def wait_for_progress(stack, evaluation_id: str, at_least: int) -> None:
    for _ in range(600):
        data = await stack.query("query($id: ID!) { evaluation(id: $id) {"
                                 " completedCases } }", id=evaluation_id)
        if data["evaluation"]["completedCases"] >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"evaluation {evaluation_id} made no progress")


async def stored_results(pool, evaluation_id: str) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT test_case_id) AS cases"
        " FROM evaluation_results WHERE evaluation_id = $1",
        int(evaluation_id.removeprefix("ev_")))
    return row["n"], row["cases"]


@pytest.fixture
async def slow_model(database_url):
    config = SimulatorConfig(accuracy=0.8, latency_ms=60, seed=11)
    async with simulator(database_url, config) as url:
        yield url


async def test_a_worker_killed_mid_run_is_replaced_and_the_run_ends_exact(
        settings, pool, slow_model):
    own = settings.replace(redis_prefix=settings.redis_prefix + "-kill")
    async with running_stack(own, with_worker=False) as stack:
        evaluation_id = await start_run(stack, 80)
        async with worker_process(own, slow_model) as first:
            await wait_for_progress(stack, evaluation_id, 10)
            first.send_signal(signal.SIGKILL)
            assert await exit_code(first, timeout_s=10) is not None
        async with worker_process(own, slow_model):
            evaluation = await stack.wait_for_status(evaluation_id, "COMPLETED",
                                                     timeout_s=120)
        events, _ = await subscribe(stack, "graphql-transport-ws", evaluation_id,
                                    after=0)

    assert evaluation["completedCases"] == 80
    assert await stored_results(pool, evaluation_id) == (80, 80)
    assert_contiguous(events, 1)
    assert sum(e["kind"] == "RESULT_ADDED" for e in events) == 80


async def test_many_graceful_restarts_do_not_use_up_a_run(settings, pool,
                                                          slow_model):
    own = settings.replace(redis_prefix=settings.redis_prefix + "-restarts")
    async with running_stack(own, with_worker=False) as stack:
        evaluation_id = await start_run(stack, 120)
        for _ in range(7):
            done = await completed_cases(stack, evaluation_id)
            async with worker_process(own, slow_model) as worker:
                # New results mean this worker is up and running the job.
                await wait_for_progress(stack, evaluation_id, done + 3)
                worker.send_signal(signal.SIGTERM)
                assert await exit_code(worker, timeout_s=30) == 0
        async with worker_process(own, slow_model):
            evaluation = await stack.wait_for_status(evaluation_id, "COMPLETED",
                                                     timeout_s=120)

    assert evaluation["completedCases"] == 120
    assert await stored_results(pool, evaluation_id) == (120, 120)


async def test_a_second_job_for_a_running_evaluation_leaves_it_alone(
        settings, pool, slow_model):
    import redis.asyncio as aioredis

    own = settings.replace(redis_prefix=settings.redis_prefix + "-twice")
    async with running_stack(own, with_worker=False) as stack:
        # Long enough to outlast the two seconds a job waits for the lock.
        test_set = await create_test_set(stack, arithmetic_cases(150))
        created = await create_evaluation(stack, test_set["id"], concurrency=2)
        evaluation_id = int(created["id"].removeprefix("ev_"))
        redis = aioredis.from_url(own.redis_url)
        client = ModelClient(slow_model, None, timeout_s=10, max_retries=0)
        job = JobContext(pool=pool, redis=redis, redis_prefix=own.redis_prefix,
                         model_client=client, database_url=own.database_url)
        try:
            first = asyncio.create_task(run_evaluation(job, evaluation_id, 1))
            await wait_for_progress(stack, created["id"], 2)
            second = await run_evaluation(job, evaluation_id, 1)
            outcome = await first
        finally:
            await client.close()
            await redis.aclose()

    assert second == "RUNNING_ELSEWHERE"
    assert outcome == "COMPLETED"
    assert await stored_results(pool, created["id"]) == (150, 150)


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed")
async def test_a_redis_restart_mid_run_loses_and_doubles_nothing(settings, pool,
                                                                 slow_model):
    port = free_port()
    own = settings.replace(redis_prefix=settings.redis_prefix + "-redis",
                           redis_url=f"redis://127.0.0.1:{port}/0")
    redis = start_redis(port)
    try:
        async with running_stack(own, with_worker=False) as stack:
            evaluation_id = await start_run(stack, 100)
            async with worker_process(own, slow_model):
                await wait_for_progress(stack, evaluation_id, 10)
                redis.terminate()
                redis.wait(timeout=10)
                await asyncio.sleep(1.0)
                redis = start_redis(port)
                evaluation = await stack.wait_for_status(
                    evaluation_id, "COMPLETED", timeout_s=120)
    finally:
        redis.terminate()
        redis.wait(timeout=10)

    assert evaluation["completedCases"] == 100
    assert await stored_results(pool, evaluation_id) == (100, 100)


def start_redis(port: int) -> subprocess.Popen:
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return redis
        time.sleep(0.02)
    raise AssertionError(f"redis-server did not start on port {port}")


async def test_losing_the_database_connections_mid_run_resumes_it(
        settings, pool, slow_model):
    own = settings.replace(redis_prefix=settings.redis_prefix + "-pgkill")
    async with running_stack(own, with_worker=False) as stack:
        evaluation_id = await start_run(stack, 100)
        async with worker_process(own, slow_model):
            await wait_for_progress(stack, evaluation_id, 10)
            killed = await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database()"
                "   AND application_name IN ('assay-worker', 'assay-run-lock')")
            evaluation = await stack.wait_for_status(evaluation_id, "COMPLETED",
                                                     timeout_s=120)

    assert killed >= 2
    assert evaluation["completedCases"] == 100
    assert await stored_results(pool, evaluation_id) == (100, 100)


async def test_the_sweep_replaces_a_dead_workers_job_and_clears_it_away(
        settings, pool, slow_model):
    from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

    from app.jobs import queue, recovery

    own = settings.replace(redis_prefix=settings.redis_prefix + "-sweep")
    async with running_stack(own, with_worker=False) as stack:
        evaluation_id = int((await start_run(stack, 3)).removeprefix("ev_"))
        # As a worker killed mid-run leaves it: IN_PROGRESS, its job marked
        # as running, and no run lock held.
        await pool.execute(
            "UPDATE evaluations SET status = 'IN_PROGRESS',"
            " created_at = now() - interval '1 minute' WHERE id = $1",
            evaluation_id)
        arq = await queue.connect(own.redis_url)
        old_job = queue.job_id(own.redis_prefix, evaluation_id, 1)
        await arq.set(in_progress_key_prefix + old_job, b"1")
        await arq.set(retry_key_prefix + old_job, b"1")
        try:
            # Another deployment sharing the database leaves it alone.
            elsewhere = await recovery.sweep(pool, arq, own.database_url,
                                             own.redis_prefix + "-other")
            requeued = await recovery.sweep(pool, arq, own.database_url,
                                            own.redis_prefix)
            queued = await arq.zrange(queue.queue_name(own.redis_prefix), 0, -1)
            old_keys = await arq.exists(in_progress_key_prefix + old_job,
                                        job_key_prefix + old_job,
                                        retry_key_prefix + old_job)
            again = await recovery.sweep(pool, arq, own.database_url,
                                         own.redis_prefix)
        finally:
            await arq.aclose()
        attempt = await pool.fetchval(
            "SELECT attempt FROM evaluations WHERE id = $1", evaluation_id)

    assert elsewhere == 0
    assert requeued == 1
    assert attempt == 2
    assert old_keys == 0
    assert queued == [queue.job_id(own.redis_prefix, evaluation_id, 2).encode()]
    assert again == 0
