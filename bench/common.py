"""What every benchmark needs: a throwaway database and Redis prefix, Assay's
own processes started as a user starts them, and figures printed the same way.

Benchmarks run against the PostgreSQL and Redis of this machine
(ASSAY_BENCH_DATABASE_URL names a database to connect to for creating the
throwaway one; REDIS_URL the Redis), never against anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from arq.constants import health_check_key_suffix  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from app import auth  # noqa: E402
from app.jobs import queue  # noqa: E402
from app.llm.simulator import MODEL_ID  # noqa: E402
from app.settings import DEFAULT_REDIS_URL, Settings  # noqa: E402
from app.store import db  # noqa: E402
from app.store import evaluations as evaluation_store  # noqa: E402
from app.store import test_sets as test_set_store  # noqa: E402
from app.store.api_keys import ensure_workspace  # noqa: E402
from app.store.rows import NewTestCase  # noqa: E402

ADMIN_URL = os.environ.get("ASSAY_BENCH_DATABASE_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
ASSAY = [sys.executable, "-m", "app.cli", "--log-level", "WARNING"]
WORKSPACE = "bench"
WORKER_START_TIMEOUT_S = 60.0
# The prompt of every benchmark evaluation: the simulator knows its cases.
PROMPT_TEMPLATE = "{{ question }}"


@contextlib.asynccontextmanager
async def throwaway_settings(**changes: object) -> AsyncIterator[Settings]:
    """Settings for a new, migrated database and a Redis prefix of their own;
    the database is dropped and the prefix's keys deleted afterwards."""
    name = f"assay_bench_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    settings = Settings(database_url=url, redis_url=REDIS_URL,
                        redis_prefix=f"assay-bench-{uuid.uuid4().hex[:8]}")
    settings = settings.replace(**changes)
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await db.migrate(settings)
        yield settings
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        await _delete_redis_keys(settings)


async def _delete_redis_keys(settings: Settings) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url)
    try:
        keys = [key async for key in redis.scan_iter(f"*{settings.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an `assay` process using these settings."""
    return {**os.environ, "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "ASSAY_REDIS_PREFIX": settings.redis_prefix, **extra}


def start(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """An `assay` command as a child process."""
    return subprocess.Popen([*ASSAY, *args], env=env, cwd=REPO)


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_for_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx2.AsyncClient() as http:
        while True:
            try:
                await http.get(url)
                return
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer in {timeout_s} s")
                await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def workspace_id(pool: asyncpg.Pool) -> int:
    return await ensure_workspace(pool, WORKSPACE)


async def api_key(pool: asyncpg.Pool) -> str:
    """An admin key of the benchmark's workspace."""
    _, key = await auth.create_key(pool, WORKSPACE, auth.ADMIN)
    return key


async def arithmetic_test_set(pool: asyncpg.Pool, size: int,
                              categories: int = 5) -> int:
    """A test set of `size` sums the simulator knows; its row id."""
    row, _ = await test_set_store.create_test_set(
        pool, await workspace_id(pool), f"bench {size} {uuid.uuid4().hex[:6]}",
        None, [],
        [NewTestCase(input={"question": f"What is {i} plus {i + 1}?"},
                     expected_output=str(2 * i + 1),
                     category=f"group {i % categories}") for i in range(size)])
    return row.id


@contextlib.asynccontextmanager
async def workers_running(settings: Settings, env: dict[str, str],
                          count: int = 1) -> AsyncIterator[list[subprocess.Popen]]:
    """`count` worker processes, each polling the queue before the next starts;
    all stopped afterwards."""
    # Workers have no health endpoint, but arq writes a health-check key on a
    # worker's first poll and then only hourly: a key deleted before a worker
    # starts reappears once that worker is taking jobs.
    health_key = queue.queue_name(settings.redis_prefix) + health_check_key_suffix
    redis = Redis.from_url(settings.redis_url)
    workers = []
    try:
        for _ in range(count):
            await redis.delete(health_key)
            workers.append(start(["worker"], env))
            deadline = time.monotonic() + WORKER_START_TIMEOUT_S
            while not await redis.exists(health_key):
                if workers[-1].poll() is not None:
                    raise RuntimeError(f"a worker exited with {workers[-1].returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not start polling the queue"
                                       f" in {WORKER_START_TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.05)
        yield workers
    finally:
        stop(*workers)
        await redis.aclose()


async def queue_evaluation(pool: asyncpg.Pool, settings: Settings,
                           test_set_id: int, concurrency: int) -> int:
    """Store a new evaluation of the test set and queue its job; its row id."""
    new = evaluation_store.NewEvaluation(
        workspace_id=await workspace_id(pool), test_set_id=test_set_id,
        name=None, model=MODEL_ID, prompt_template=PROMPT_TEMPLATE,
        system_prompt=None, temperature=None, max_tokens=None,
        scorer_type="NUMERIC", scorer_options={}, concurrency=concurrency,
        queue_prefix=settings.redis_prefix)
    evaluation, _ = await evaluation_store.create_evaluation(pool, new)
    arq = await queue.connect(settings.redis_url)
    try:
        await queue.enqueue_evaluation(arq, settings.redis_prefix, evaluation.id,
                                       evaluation.attempt)
    finally:
        await arq.aclose()
    return evaluation.id


async def seconds_to_complete(pool: asyncpg.Pool, settings: Settings,
                              test_set_id: int, concurrency: int) -> float:
    """Queue a new evaluation of the test set; seconds from enqueueing it to
    its COMPLETED status. Raises if it ends otherwise or any case failed."""
    # The end is the completed_at PostgreSQL records, on this machine's clock
    # too, so how often the loop below looks adds no error.
    enqueued_at = time.time()
    evaluation_id = await queue_evaluation(pool, settings, test_set_id,
                                           concurrency)
    while (finished := await evaluation_store.get_evaluation(
            pool, evaluation_id)).status in ("QUEUED", "IN_PROGRESS"):
        await asyncio.sleep(0.1)

    if finished.status != "COMPLETED" or finished.failed_cases:
        raise RuntimeError(
            f"evaluation {evaluation_id} ended {finished.status} with"
            f" {finished.failed_cases} failed case(s): {finished.error}")
    return finished.completed_at.timestamp() - enqueued_at


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def report(name: str, value: float, unit: str, *, ceiling: float | None = None,
           ceiling_name: str = "ceiling", target: str = "") -> None:
    """One figure, with what it is compared with and the ratio."""
    line = f"  {name:<34} {value:>10.1f} {unit}"
    if ceiling is not None:
        ratio = value / ceiling if ceiling else math.nan
        line += f"   {ceiling_name} {ceiling:,.1f} {unit}, ratio {ratio:.2f}"
    if target:
        line += f"   (target: {target})"
    print(line, flush=True)
