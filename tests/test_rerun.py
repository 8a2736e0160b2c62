"""rerunEvaluation: a FAILED or CANCELLED evaluation runs again as a fresh
attempt, whatever became of the earlier one, and finishes what it left."""

from __future__ import annotations

import pytest

from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.fake_model import Answer, Reset, Status, fake_model
from tests.stack import GraphQLError, running_stack
from tests.test_progress import assert_contiguous, subscribe
from tests.test_recovery import stored_results

RERUN = "mutation($id: ID!) { rerunEvaluation(id: $id) { id status completedCases } }"
CANCEL = "mutation($id: ID!) { cancelEvaluation(id: $id) { status } }"


async def test_a_run_cancelled_while_queued_runs_again_exactly_once(settings, pool,
                                                                    model_url):
    own = settings.replace(redis_prefix=settings.redis_prefix + "-rerun",
                           openai_base_url=model_url)
    async with running_stack(own, with_worker=False) as api:
        test_set = await create_test_set(api, arithmetic_cases(12))
        evaluation_id = (await create_evaluation(api, test_set["id"]))["id"]
        await api.query(CANCEL, id=evaluation_id)
        rerun = (await api.query(RERUN, id=evaluation_id))["rerunEvaluation"]
        # The first attempt's job is still queued; it must not run the cases.
        async with running_stack(own) as stack:
            await stack.wait_for_status(evaluation_id, "COMPLETED")
            events, error = await subscribe(stack, "graphql-transport-ws",
                                            evaluation_id, after=0)

    assert rerun["status"] == "QUEUED"
    assert error is None
    assert_contiguous(events, 1)
    statuses = [e["status"] for e in events if e["kind"] == "STATUS_CHANGED"]
    assert statuses == ["CANCELLED", "QUEUED", "IN_PROGRESS", "COMPLETED"]
    assert await stored_results(pool, evaluation_id) == (12, 12)


async def test_a_failed_run_can_finish_after_the_fault_is_fixed(settings, pool):
    async with fake_model() as fake:
        fake.default = Status(401)
        own = settings.replace(redis_prefix=settings.redis_prefix + "-refail",
                               openai_base_url=fake.base_url)
        async with running_stack(own) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(6))
            evaluation_id = (await create_evaluation(
                stack, test_set["id"], promptTemplate="{{ question }}",
                scorer={"type": "EXACT_MATCH"}))["id"]
            failed = await stack.wait_for_status(evaluation_id, "FAILED")
            # A cancel after the end changes nothing...
            with pytest.raises(GraphQLError) as late_cancel:
                await stack.query(CANCEL, id=evaluation_id)
            # ...and does not keep the next attempt from running.
            fake.default = Answer("5")
            await stack.query(RERUN, id=evaluation_id)
            completed = await stack.wait_for_status(evaluation_id, "COMPLETED")

    assert failed["error"].startswith("unauthorized: ")
    assert late_cancel.value.code == "CONFLICT"
    assert completed["completedCases"] == 6
    assert completed["error"] is None
    assert await stored_results(pool, evaluation_id) == (6, 6)


async def test_only_failed_or_cancelled_evaluations_can_be_run_again(stack):
    test_set = await create_test_set(stack, arithmetic_cases(2))
    evaluation_id = (await create_evaluation(stack, test_set["id"]))["id"]
    await stack.wait_for_status(evaluation_id, "COMPLETED")

    with pytest.raises(GraphQLError) as completed:
        await stack.query(RERUN, id=evaluation_id)
    with pytest.raises(GraphQLError) as unknown:
        await stack.query(RERUN, id="ev_987654321")
    with pytest.raises(GraphQLError) as malformed:
        await stack.query(RERUN, id="ts_1")

    assert completed.value.code == "CONFLICT"
    assert "COMPLETED" in completed.value.message
    assert unknown.value.code == "NOT_FOUND"
    assert malformed.value.code == "BAD_USER_INPUT"


RERUN_KEEPING_FAILED = """mutation($id: ID!) {
  rerunEvaluation(id: $id, retryFailed: false) { status } }"""
PROGRESS = """subscription($id: ID!, $after: Int) {
  evaluationProgress(evaluationId: $id, afterSequence: $after) {
    sequence kind status completedCases failedCases result { id error } } }"""


async def test_a_dead_endpoint_fails_the_run_fast_and_a_rerun_retries_its_cases(
        settings, pool):
    async with fake_model() as fake:
        fake.default = Reset()
        own = settings.replace(redis_prefix=settings.redis_prefix + "-down",
                               openai_base_url=fake.base_url, model_max_retries=0)
        async with running_stack(own) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(40))
            evaluation_id = (await create_evaluation(
                stack, test_set["id"], promptTemplate="{{ question }}",
                scorer={"type": "EXACT_MATCH"}, concurrency=2))["id"]
            failed = await stack.wait_for_status(evaluation_id, "FAILED")
            calls_while_down = len(fake.calls)

            fake.default = Answer("5")
            # First only the cases never reached, keeping the failed results...
            await stack.query(RERUN_KEEPING_FAILED, id=evaluation_id)
            kept = await stack.wait_for_status(evaluation_id, "COMPLETED")
            # ...then those too.
            await stack.query(RERUN, id=evaluation_id)
            completed = await stack.wait_for_status(evaluation_id, "COMPLETED")
            events, error = await subscribe(stack, "graphql-transport-ws",
                                            evaluation_id, after=0,
                                            document=PROGRESS)

    assert failed["error"].startswith("the model endpoint failed 10 calls in a row")
    assert 10 <= failed["failedCases"] <= failed["completedCases"] < 40
    assert calls_while_down < 15
    assert kept["completedCases"] == 40
    assert kept["failedCases"] == failed["failedCases"]
    assert completed["completedCases"] == 40 and completed["failedCases"] == 0
    assert await stored_results(pool, evaluation_id) == (40, 40)
    assert error is None
    assert_contiguous(events, 1)
    replaced = [e for e in events if e["kind"] == "RESULT_ADDED"
                and e["result"] is None]
    assert len(replaced) == failed["failedCases"]


async def test_a_completed_run_with_failed_results_can_retry_just_those(
        settings, pool):
    questions = [f"q{i}" for i in range(8)]
    async with fake_model([("q3", [Status(500)]), ("q6", [Status(502)])]) as fake:
        own = settings.replace(redis_prefix=settings.redis_prefix + "-retry",
                               openai_base_url=fake.base_url, model_max_retries=0)
        async with running_stack(own) as stack:
            test_set = await create_test_set(stack, [
                {"input": {"question": q}, "expectedOutput": "42"}
                for q in questions])
            evaluation_id = (await create_evaluation(
                stack, test_set["id"], promptTemplate="{{ question }}",
                scorer={"type": "EXACT_MATCH"}))["id"]
            first = await stack.wait_for_status(evaluation_id, "COMPLETED")
            with pytest.raises(GraphQLError) as keeping_failed:
                await stack.query(RERUN_KEEPING_FAILED, id=evaluation_id)
            await stack.query(RERUN, id=evaluation_id)
            second = await stack.wait_for_status(evaluation_id, "COMPLETED")

    assert first["failedCases"] == 2
    assert keeping_failed.value.code == "CONFLICT"
    assert "retryFailed" in keeping_failed.value.message
    assert second["failedCases"] == 0 and second["score"] == 1.0
    assert await stored_results(pool, evaluation_id) == (8, 8)
    # Only the two failed cases were asked again.
    assert len(fake.calls) == 10


async def test_an_earlier_attempt_cannot_finish_an_evaluation_run_again(stack, pool):
    from app.store import evaluations as evaluation_store

    test_set = await create_test_set(stack, arithmetic_cases(2))
    evaluation_id = (await create_evaluation(stack, test_set["id"]))["id"]
    await stack.wait_for_status(evaluation_id, "COMPLETED")
    row_id = int(evaluation_id.removeprefix("ev_"))
    # As if it was cancelled and run again while attempt 1 was ending.
    await pool.execute("UPDATE evaluations SET status = 'QUEUED', attempt = 2"
                       " WHERE id = $1", row_id)

    late = await evaluation_store.change_status(
        pool, row_id, "COMPLETED", from_statuses=("QUEUED", "IN_PROGRESS"),
        attempt=1)

    assert late is None
    assert await pool.fetchval("SELECT status FROM evaluations WHERE id = $1",
                               row_id) == "QUEUED"
