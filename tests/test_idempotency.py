"""Idempotency keys: a client that retries a create gets what the first one
made, and nothing is created or queued twice."""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import (
    CREATE_EVALUATION,
    CREATE_TEST_SET,
    arithmetic_cases,
    create_test_set,
    unique,
)
from tests.stack import GraphQLError, running_stack


def new_test_set(key: str, name: str, cases: int = 3) -> dict:
    return {"name": name, "testCases": arithmetic_cases(cases), "idempotencyKey": key}


def evaluation_input(test_set_id: str, key: str, **overrides) -> dict:
    return {"testSetId": test_set_id, "model": "assay-simulator",
            "promptTemplate": "{{ question }}", "scorer": {"type": "NUMERIC"},
            "idempotencyKey": key, **overrides}


async def count(pool, sql: str, *args) -> int:
    return await pool.fetchval(sql, *args)


async def test_a_repeated_create_test_set_returns_the_first_one(stack, pool):
    key, name = unique("key"), unique("retried")
    first = await stack.query(CREATE_TEST_SET, input=new_test_set(key, name))
    again = await stack.query(CREATE_TEST_SET, input=new_test_set(key, name))

    assert again == first
    assert await count(pool, "SELECT count(*) FROM test_sets WHERE name = $1",
                       name) == 1


async def test_a_repeated_create_evaluation_queues_one_run(stack, pool):
    test_set = await create_test_set(stack, arithmetic_cases(5))
    key = unique("key")
    first = await stack.query(CREATE_EVALUATION,
                              input=evaluation_input(test_set["id"], key))
    again = await stack.query(CREATE_EVALUATION,
                              input=evaluation_input(test_set["id"], key))
    evaluation_id = first["createEvaluation"]["id"]
    await stack.wait_for_status(evaluation_id, "COMPLETED")

    assert again["createEvaluation"]["id"] == evaluation_id
    test_set_row = int(test_set["id"].removeprefix("ts_"))
    assert await count(pool, "SELECT count(*) FROM evaluations"
                       " WHERE test_set_id = $1", test_set_row) == 1
    assert await count(pool, "SELECT count(*) FROM evaluation_results"
                       " WHERE evaluation_id = $1",
                       int(evaluation_id.removeprefix("ev_"))) == 5


async def test_racing_retries_create_exactly_one(stack, pool):
    test_set = await create_test_set(stack, arithmetic_cases(2))
    key = unique("key")
    answers = await asyncio.gather(*[
        stack.query(CREATE_EVALUATION, input=evaluation_input(test_set["id"], key))
        for _ in range(10)])

    assert len({a["createEvaluation"]["id"] for a in answers}) == 1
    assert await count(pool, "SELECT count(*) FROM evaluations WHERE test_set_id"
                       " = $1", int(test_set["id"].removeprefix("ts_"))) == 1


@pytest.mark.parametrize("change", [
    {"name": "another name"}, {"testCases": arithmetic_cases(4)},
], ids=["name", "cases"])
async def test_the_same_key_with_another_test_set_is_a_conflict(stack, pool,
                                                                 change):
    key, name = unique("key"), unique("first")
    await stack.query(CREATE_TEST_SET, input=new_test_set(key, name))
    different = {**new_test_set(key, name), **change}

    with pytest.raises(GraphQLError) as raised:
        await stack.query(CREATE_TEST_SET, input=different)

    assert raised.value.code == "CONFLICT"
    assert raised.value.message.startswith("input.idempotencyKey: ")
    assert await count(pool, "SELECT count(*) FROM test_sets WHERE name = $1",
                       different["name"]) == (1 if "testCases" in change else 0)


async def test_the_same_key_with_another_evaluation_is_a_conflict(stack, pool):
    test_set = await create_test_set(stack, arithmetic_cases(2))
    key = unique("key")
    await stack.query(CREATE_EVALUATION, input=evaluation_input(test_set["id"], key))

    with pytest.raises(GraphQLError) as raised:
        await stack.query(CREATE_EVALUATION, input=evaluation_input(
            test_set["id"], key, concurrency=2))

    assert raised.value.code == "CONFLICT"
    assert await count(pool, "SELECT count(*) FROM evaluations WHERE test_set_id"
                       " = $1", int(test_set["id"].removeprefix("ts_"))) == 1


async def test_one_key_may_serve_both_creates(stack):
    key = unique("key")
    test_set = (await stack.query(CREATE_TEST_SET, input=new_test_set(
        key, unique("shared key"))))["createTestSet"]
    evaluation = await stack.query(CREATE_EVALUATION,
                                   input=evaluation_input(test_set["id"], key))

    assert evaluation["createEvaluation"]["id"].startswith("ev_")


async def test_a_key_is_free_again_once_its_test_set_is_deleted(stack):
    key, name = unique("key"), unique("deleted")
    first = await stack.query(CREATE_TEST_SET, input=new_test_set(key, name))
    await stack.query("mutation($id: ID!) { deleteTestSet(id: $id) }",
                      id=first["createTestSet"]["id"])
    again = await stack.query(CREATE_TEST_SET, input=new_test_set(key, name))

    assert again["createTestSet"]["id"] != first["createTestSet"]["id"]


async def test_a_key_is_forgotten_after_its_time(settings, model_url):
    brief = settings.replace(redis_prefix=settings.redis_prefix + "-keys",
                             openai_base_url=model_url,
                             idempotency_key_hours=0.5 / 3600)
    async with running_stack(brief, with_worker=False) as stack:
        key = unique("key")
        first = await stack.query(CREATE_TEST_SET,
                                  input=new_test_set(key, unique("a")))
        await asyncio.sleep(0.7)
        # A different request: after expiry this is no conflict.
        later = await stack.query(CREATE_TEST_SET,
                                  input=new_test_set(key, unique("b")))

    assert later["createTestSet"]["id"] != first["createTestSet"]["id"]


@pytest.mark.parametrize("key, problem", [
    ("", "must not be empty"), ("   ", "must not be empty"),
    ("k" * 201, "at most 200"), ("a\x00b", "NUL"),
], ids=["empty", "blank", "too-long", "nul"])
async def test_unusable_keys_are_refused(stack, pool, key, problem):
    name = unique("bad key")
    with pytest.raises(GraphQLError) as raised:
        await stack.query(CREATE_TEST_SET, input=new_test_set(key, name))

    assert raised.value.code == "BAD_USER_INPUT"
    assert raised.value.message.startswith("input.idempotencyKey: ")
    assert problem in raised.value.message
    assert await count(pool, "SELECT count(*) FROM test_sets WHERE name = $1",
                       name) == 0


async def test_expired_keys_are_deleted_and_fresh_ones_kept(stack, pool):
    from app.store import idempotency

    old_key, fresh_key = unique("old"), unique("fresh")
    for key in (old_key, fresh_key):
        await stack.query(CREATE_TEST_SET, input=new_test_set(key, unique("kept")))
    await pool.execute("UPDATE idempotency_keys SET created_at = now() - interval"
                       " '25 hours' WHERE key = $1", old_key)

    forgotten = await idempotency.delete_expired(pool, ttl_hours=24)
    left = {r["key"] for r in await pool.fetch(
        "SELECT key FROM idempotency_keys WHERE key = any($1::text[])",
        [old_key, fresh_key])}

    assert forgotten >= 1
    assert left == {fresh_key}
