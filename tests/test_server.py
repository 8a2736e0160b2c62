"""The HTTP surface around GraphQL: health, GraphiQL, batched loading."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.stack import free_port, running_stack

EVALUATIONS_WITH_EVERYTHING = """
query($ts: ID!, $first: Int) { evaluations(testSetId: $ts, first: $first) {
  edges { node {
    id status score
    testSet { id name testCaseCount categories { name testCaseCount } }
    categoryScores { category { name } score passRate completedCases }
    results(first: 5) { edges { node { id score testCase { id input
                                                category { name } } } } }
  } }
} }"""


OUR_TABLES = re.compile(r"\b(test_sets|categories|test_cases|evaluations"
                        r"|evaluation_results|progress_events)\b")


async def test_healthz_answers_ok_when_postgres_and_redis_answer(stack):
    response = await stack.http.get(f"{stack.url}/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed")
async def test_healthz_answers_503_naming_redis_when_redis_is_down(settings):
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        await _wait_for_port(port)
        own_redis = settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")
        async with running_stack(own_redis, with_worker=False) as stack:
            before = await stack.http.get(f"{stack.url}/healthz")
            redis.terminate()
            redis.wait(timeout=10)
            after = await stack.http.get(f"{stack.url}/healthz")
    finally:
        if redis.poll() is None:
            redis.kill()
            redis.wait()

    assert before.status_code == 200
    assert after.status_code == 503
    assert after.json()["down"] == ["redis"]


async def test_a_browser_opening_graphql_gets_graphiql(stack):
    response = await stack.http.get(stack.graphql_url,
                                    headers={"Accept": "text/html"})

    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_nested_fields_cost_the_same_statements_for_one_or_many_rows(
        settings, model_url):
    statements: list[str] = []

    def count(record) -> None:
        # Only Assay's own statements: asyncpg adds type introspection on each
        # new connection, and how many connections open depends on timing.
        if OUR_TABLES.search(record.query):
            statements.append(record.query)
    counted = settings.replace(redis_prefix=settings.redis_prefix + "-sql",
                               openai_base_url=model_url)

    async with running_stack(counted, query_logger=count) as stack:
        test_set = await create_test_set(stack, arithmetic_cases(6))
        for _ in range(12):
            created = await create_evaluation(stack, test_set["id"])
        await stack.wait_for_status(created["id"], "COMPLETED")
        for evaluation in (await stack.query(
                "query($ts: ID!) { evaluations(testSetId: $ts) { edges { node {"
                " id } } } }", ts=test_set["id"]))["evaluations"]["edges"]:
            await stack.wait_for_status(evaluation["node"]["id"], "COMPLETED")

        await stack.query(EVALUATIONS_WITH_EVERYTHING, ts=test_set["id"], first=12)
        statements.clear()
        one = await stack.query(EVALUATIONS_WITH_EVERYTHING, ts=test_set["id"],
                                first=1)
        for_one = len(statements)
        statements.clear()
        many = await stack.query(EVALUATIONS_WITH_EVERYTHING, ts=test_set["id"],
                                 first=12)
        for_many = len(statements)

    assert len(one["evaluations"]["edges"]) == 1
    assert len(many["evaluations"]["edges"]) == 12
    assert for_many == for_one


async def _wait_for_port(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nothing listens on port {port}")


async def test_healthz_answers_503_naming_postgresql_when_it_is_down(settings):
    from app import services
    from app.store import db

    if isinstance(services._find_postgres_programs(), str):
        pytest.skip("PostgreSQL's initdb is not installed")
    # Not under pytest's tmp_path: when the tests run as root, PostgreSQL runs
    # as the postgres user, who must be able to enter the directory.
    data_dir = Path(tempfile.mkdtemp(prefix="assay-healthz-test-"))
    data_dir.chmod(0o755)
    nowhere = settings.replace(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/assay")
    try:
        own, local = await services.ensure_services(nowhere, data_dir,
                                                    report=lambda _: None)
        try:
            await db.migrate(own)
            async with running_stack(own, with_worker=False) as stack:
                before = await stack.http.get(f"{stack.url}/healthz")
                await local.stop()
                after = await stack.http.get(f"{stack.url}/healthz")
        finally:
            await local.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    assert before.status_code == 200
    assert after.status_code == 503
    assert after.json()["down"] == ["postgresql"]


async def test_a_repeated_document_is_validated_once(stack):
    # The cache lives in Strawberry (a private, module-level LRU); this checks
    # that Assay's own validation rules do not make every lookup miss.
    from strawberry.extensions.validation_cache import _get_validate_cache

    document = "{ me { workspace role } }  # validated once"
    cache = _get_validate_cache(200)
    await stack.query(document)
    before = cache.cache_info()
    for _ in range(3):
        await stack.query(document)
    after = cache.cache_info()

    assert after.hits - before.hits == 3
    assert after.misses == before.misses
