"""Evaluation runs against a model that misbehaves, over real HTTP.

Every case ends as a scored result or a result with a typed error; a
rate-limited run slows down instead of failing cases; a run that cannot get
through at all fails with that reason; a cancel stops a run whose calls never
come back.
"""

from __future__ import annotations

import asyncio
import time

from tests.factories import create_evaluation, create_test_set
from tests.fake_model import (
    Answer,
    Hang,
    NoChoices,
    NotJson,
    Reset,
    Status,
    TooManyRequests,
    fake_model,
)
from tests.stack import running_stack
from tests.test_progress import assert_contiguous, subscribe

PROGRESS = """
subscription($id: ID!, $after: Int) {
  evaluationProgress(evaluationId: $id, afterSequence: $after) {
    sequence kind status completedCases failedCases waitSeconds
  }
}"""

RESULTS = """
query($id: ID!) { evaluation(id: $id) {
  status error completedCases failedCases
  results(first: 100) { edges { node { error score passed output
    testCase { input } } } }
} }"""


def cases(*questions: str) -> list[dict]:
    return [{"input": {"question": q}, "expectedOutput": "42"} for q in questions]


async def start(stack, questions, **overrides) -> str:
    test_set = await create_test_set(stack, cases(*questions), name="faults")
    created = await create_evaluation(
        stack, test_set["id"], promptTemplate="{{ question }}",
        scorer={"type": "EXACT_MATCH"}, **overrides)
    return created["id"]


async def results_by_question(stack, evaluation_id):
    evaluation = (await stack.query(RESULTS, id=evaluation_id))["evaluation"]
    return evaluation, {edge["node"]["testCase"]["input"]["question"]: edge["node"]
                        for edge in evaluation["results"]["edges"]}


def faulty_settings(settings, suffix: str, fake, **changes):
    return settings.replace(redis_prefix=f"{settings.redis_prefix}-{suffix}",
                            openai_base_url=fake.base_url, **changes)


# Each question gets its fault on every attempt (two: one try, one retry).
FAULTS = {
    "answers": ([Answer("42")], None),
    "answers after a 503": ([Status(503), Answer("42")], None),
    "always 500": ([Status(500)] * 2, "upstream_error"),
    "always 502": ([Status(502)] * 2, "upstream_error"),
    "resets": ([Reset()] * 2, "connection_error"),
    "never answers": ([Hang()] * 2, "timeout"),
    "not json": ([NotJson()], "invalid_response"),
    "no choices": ([NoChoices()], "invalid_response"),
    "refuses": ([Answer(None, refusal="I won't.")], "refused"),
    "filtered": ([Answer("", finish_reason="content_filter")], "content_filtered"),
    "bad request": ([Status(400)], "bad_request"),
    "nul": ([Answer("4\x002")], None),
}


async def test_every_fault_ends_as_a_scored_result_or_a_typed_error(settings):
    async with fake_model([(q, script) for q, (script, _) in FAULTS.items()]) as fake:
        own = faulty_settings(settings, "faults", fake, model_timeout_s=0.5,
                              model_max_retries=1)
        async with running_stack(own) as stack:
            evaluation_id = await start(stack, list(FAULTS), concurrency=4)
            await stack.wait_for_status(evaluation_id, "COMPLETED", timeout_s=30)
            evaluation, results = await results_by_question(stack, evaluation_id)

    assert evaluation["completedCases"] == len(FAULTS)
    for question, (_, kind) in FAULTS.items():
        result = results[question]
        if kind is None:
            assert result["error"] is None, question
            assert result["score"] is not None, question
        else:
            assert result["error"].startswith(f"{kind}: "), (question, result)
            # A failed call is never scored as a wrong answer.
            assert result["score"] is None and result["passed"] is None, question
    assert results["answers"]["passed"] is True
    assert results["nul"]["output"] == "4\ufffd2"
    assert results["refuses"]["output"] == "I won't."
    assert evaluation["failedCases"] == sum(k is not None for _, k in FAULTS.values())


async def test_a_rate_limited_run_holds_off_and_fails_no_case(settings):
    questions = [f"q{i}" for i in range(20)]
    async with fake_model() as fake:
        fake.rate_limit(12, retry_after="0.5")
        # No retries in the client: every 429 reaches the run itself.
        own = faulty_settings(settings, "throttled", fake, model_max_retries=0)
        async with running_stack(own) as stack:
            evaluation_id = await start(stack, questions, concurrency=8)
            events, error = await subscribe(stack, "graphql-transport-ws",
                                            evaluation_id, after=0,
                                            document=PROGRESS)
            evaluation, results = await results_by_question(stack, evaluation_id)

    assert error is None
    assert evaluation["status"] == "COMPLETED"
    assert evaluation["failedCases"] == 0
    assert all(results[q]["passed"] for q in questions)
    assert_contiguous(events, 1)
    pauses = [e for e in events if e["kind"] == "RATE_LIMITED"]
    assert pauses and all(e["waitSeconds"] == 0.5 for e in pauses)
    # Each rate-limited case was asked once more, not hammered.
    assert len(fake.calls) == len(questions) + 12
    # Nothing new went out while the run held off after its first 429.
    first_429 = next(c.at for c in fake.calls
                     if isinstance(c.behaviour, Status))
    assert not [c for c in fake.calls if first_429 + 0.05 < c.at < first_429 + 0.45]


async def test_a_run_that_is_never_let_through_fails_with_that_reason(settings):
    async with fake_model() as fake:
        fake.default = TooManyRequests("0.2")
        own = faulty_settings(settings, "refused", fake, model_max_retries=0,
                              rate_limit_max_wait_s=1.0)
        async with running_stack(own) as stack:
            evaluation_id = await start(stack, ["a", "b", "c"], concurrency=2)
            evaluation = await stack.wait_for_status(evaluation_id, "FAILED",
                                                     timeout_s=20)

    assert evaluation["error"].startswith("rate_limited: ")
    # No case was failed for the endpoint's sake: they can be run again.
    assert evaluation["completedCases"] == 0
    # Bounded: a handful of calls per second of waiting, not a storm.
    assert len(fake.calls) < 20


async def test_a_cancel_stops_a_run_whose_calls_never_return(settings):
    questions = [f"q{i}" for i in range(30)]
    async with fake_model([(q, [Answer("42")]) for q in questions[:3]]) as fake:
        fake.default = Hang()
        own = faulty_settings(settings, "cancel", fake, model_timeout_s=60)
        async with running_stack(own) as stack:
            evaluation_id = await start(stack, questions, concurrency=8)
            while len(fake.calls) < 3 + 8:
                await asyncio.sleep(0.05)
            follower = asyncio.create_task(subscribe(
                stack, "graphql-transport-ws", evaluation_id, timeout_s=15))
            await asyncio.sleep(0.3)

            cancelled_at = time.monotonic()
            await stack.query("mutation($id: ID!) { cancelEvaluation(id: $id) {"
                              " status } }", id=evaluation_id)
            events, error = await follower
            stream_ended_s = time.monotonic() - cancelled_at
            calls_at_cancel = len(fake.calls)
            await asyncio.sleep(1.5)
            abandoned = fake.abandoned
            evaluation, results = await results_by_question(stack, evaluation_id)

    assert error is None
    assert events[-1]["kind"] == "STATUS_CHANGED"
    assert events[-1]["status"] == "CANCELLED"
    assert stream_ended_s < 3
    # No new call after the cancel, and what was stored before it is kept.
    assert len(fake.calls) == calls_at_cancel
    # The worker gave up the calls in flight instead of waiting on them.
    assert abandoned == 8
    assert evaluation["status"] == "CANCELLED"
    assert evaluation["completedCases"] == 3
    assert set(results) == set(questions[:3])



async def test_a_worker_stopping_during_a_rate_limit_pause_hands_the_run_back_at_once(
        settings, pool):
    import redis.asyncio as aioredis

    from app.jobs import queue
    from app.jobs.evaluation import JobContext, run_evaluation
    from app.llm.client import ModelClient

    async with fake_model() as fake:
        fake.default = TooManyRequests("120")
        own = faulty_settings(settings, "paused", fake)
        async with running_stack(own, with_worker=False) as stack:
            evaluation_id = await start(stack, [f"q{i}" for i in range(10)])
            row_id = int(evaluation_id.removeprefix("ev_"))
            redis = aioredis.from_url(own.redis_url)
            arq = await queue.connect(own.redis_url)
            client = ModelClient(fake.base_url, None, timeout_s=10, max_retries=0)
            job = JobContext(pool=pool, redis=redis, redis_prefix=own.redis_prefix,
                             model_client=client, database_url=own.database_url,
                             arq=arq)
            try:
                run = asyncio.create_task(run_evaluation(job, row_id, 1))
                while not await pool.fetchval(
                        "SELECT count(*) FROM progress_events WHERE evaluation_id"
                        " = $1 AND kind = 'RATE_LIMITED'", row_id):
                    await asyncio.sleep(0.05)
                stopping_at = time.monotonic()
                job.draining.set()
                outcome = await asyncio.wait_for(run, 10)
                handed_back_s = time.monotonic() - stopping_at
            finally:
                await client.close()
                await redis.aclose()
                await arq.aclose()
            attempt = await pool.fetchval(
                "SELECT attempt FROM evaluations WHERE id = $1", row_id)

    assert outcome == "HANDED_BACK"
    assert handed_back_s < 2
    assert attempt == 2
