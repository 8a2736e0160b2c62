"""The worker against misbehaving models, over real HTTP."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.llm.simulator import SimulatorConfig
from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.stack import running_stack, serving, simulator

RESULTS = """
query($id: ID!) { evaluation(id: $id) {
  status error completedCases failedCases passedCases score
  results(first: 500) { edges { node { error score passed output } } }
} }"""


async def test_model_errors_are_stored_on_their_results_and_the_run_goes_on(
        settings, database_url):
    config = SimulatorConfig(accuracy=1.0, error_rate=0.3, seed=3)
    async with simulator(database_url, config) as model_url:
        faulty = settings.replace(redis_prefix=settings.redis_prefix + "-faulty",
                                  openai_base_url=model_url, model_max_retries=0)
        async with running_stack(faulty) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(60))
            created = await create_evaluation(stack, test_set["id"])
            await stack.wait_for_status(created["id"], "COMPLETED")
            evaluation = (await stack.query(RESULTS, id=created["id"]))["evaluation"]

    results = [edge["node"] for edge in evaluation["results"]["edges"]]
    failed = [r for r in results if r["error"]]
    assert evaluation["completedCases"] == 60
    assert 0 < evaluation["failedCases"] == len(failed) < 60
    assert all(r["score"] is None and r["passed"] is None for r in failed)
    assert {r["error"].split(":")[0] for r in failed} <= {"rate_limited",
                                                          "upstream_error"}
    # Every answer that came back was right, so errors must not drag the score.
    assert evaluation["score"] == pytest.approx(1.0)
    assert evaluation["passedCases"] == 60 - len(failed)


async def test_retries_hide_occasional_model_errors(settings, database_url):
    config = SimulatorConfig(accuracy=1.0, error_rate=0.2, seed=5)
    async with simulator(database_url, config) as model_url:
        retrying = settings.replace(redis_prefix=settings.redis_prefix + "-retry",
                                    openai_base_url=model_url, model_max_retries=6)
        async with running_stack(retrying) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(30))
            created = await create_evaluation(stack, test_set["id"])
            evaluation = await stack.wait_for_status(created["id"], "COMPLETED")

    assert evaluation["failedCases"] == 0
    assert evaluation["score"] == pytest.approx(1.0)


@pytest.mark.parametrize(("status", "kind"), [(401, "unauthorized"),
                                              (404, "model_not_found")])
async def test_rejected_credentials_or_an_unknown_model_fail_the_run_at_once(
        settings, status, kind):
    calls = []

    async def refuse(request):
        calls.append(1)
        return JSONResponse({"error": {"message": "no", "type": "x"}},
                            status_code=status)

    model = Starlette(routes=[Route("/v1/chat/completions", refuse,
                                    methods=["POST"])])
    async with serving(model) as url:
        refused = settings.replace(redis_prefix=settings.redis_prefix + f"-{status}",
                                   openai_base_url=f"{url}/v1")
        async with running_stack(refused) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(200))
            created = await create_evaluation(stack, test_set["id"], concurrency=2)
            await stack.wait_for_status(created["id"], "FAILED")
            evaluation = (await stack.query(RESULTS, id=created["id"]))["evaluation"]

    assert kind in evaluation["error"]
    assert evaluation["completedCases"] == 0
    assert len(calls) < 10


async def test_an_answer_holding_nul_is_stored_without_it(settings):
    async def answer(request):
        return JSONResponse({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "5\x00"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                      "total_tokens": 2}})

    model = Starlette(routes=[Route("/v1/chat/completions", answer,
                                    methods=["POST"])])
    async with serving(model) as url:
        nul = settings.replace(redis_prefix=settings.redis_prefix + "-nul",
                               openai_base_url=f"{url}/v1")
        async with running_stack(nul) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(1))
            created = await create_evaluation(stack, test_set["id"])
            await stack.wait_for_status(created["id"], "COMPLETED")
            evaluation = (await stack.query(RESULTS, id=created["id"]))["evaluation"]

    result = evaluation["results"]["edges"][0]["node"]
    assert result["output"] == "5\ufffd"
    assert result["passed"] is True
