"""Fixtures shared by the whole suite: a throwaway database and Redis key space.

Each test run creates its own PostgreSQL database (dropped at the end) and
uses its own Redis key prefix (deleted at the end), on the servers named by
ASSAY_TEST_DATABASE_URL (an admin URL; default the local `postgres`
database) and REDIS_URL.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from app.settings import Settings
from app.store import db

RUN_ID = uuid.uuid4().hex[:10]
ADMIN_DATABASE_URL = os.environ.get(
    "ASSAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest_asyncio.fixture(scope="session")
async def database_url():
    """A fresh, migrated database for this test run; dropped afterwards."""
    name = f"assay_test_{RUN_ID}"
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(ADMIN_DATABASE_URL, name)
    try:
        await db.migrate(Settings(database_url=url))
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest_asyncio.fixture(scope="session")
async def redis_prefix():
    """A Redis key prefix of this run's own; its keys are deleted afterwards."""
    prefix = f"assay-test-{RUN_ID}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def settings(database_url, redis_prefix) -> Settings:
    return Settings(database_url=database_url, redis_url=REDIS_URL,
                    redis_prefix=redis_prefix, model_timeout_s=10.0,
                    model_max_retries=2)


@pytest_asyncio.fixture(scope="session")
async def pool(settings):
    pool = await db.create_pool(settings)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session")
async def model_url(database_url):
    """The simulated model most tests run against: right 70% of the time."""
    from app.llm.simulator import SimulatorConfig
    from tests.stack import simulator

    async with simulator(database_url, SimulatorConfig(accuracy=0.7, seed=7)) as url:
        yield url


@pytest_asyncio.fixture(scope="session")
async def stack(settings, model_url):
    """The API and a worker, sharing this run's database and Redis prefix."""
    from tests.stack import running_stack

    async with running_stack(settings.replace(openai_base_url=model_url)) as stack:
        yield stack
