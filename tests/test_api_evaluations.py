"""Evaluations through the API, run by a real worker against the simulator."""

from __future__ import annotations

import pytest

from tests.factories import (
    arithmetic_cases,
    create_evaluation,
    create_test_set,
)
from tests.stack import GraphQLError

EVALUATION = """
query($id: ID!, $passed: Boolean, $categoryId: ID, $first: Int, $after: String) {
  evaluation(id: $id) {
    id name status model promptTemplate totalCases completedCases failedCases
    passedCases score passRate error createdAt startedAt completedAt lastSequence
    concurrency scorer { type options }
    testSet { id name }
    categoryScores { category { id name } score passRate completedCases }
    results(first: $first, after: $after, passed: $passed, categoryId: $categoryId) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { id output score passed error latencyMs promptTokens
                     completionTokens testCase { id expectedOutput
                     category { name } } } }
    }
  }
}"""


async def test_an_evaluation_runs_to_completion_with_a_result_per_case(stack):
    test_set = await create_test_set(stack, arithmetic_cases(40))

    created = await create_evaluation(stack, test_set["id"], name="smoke",
                                      concurrency=4)
    assert created["status"] == "QUEUED"
    assert created["totalCases"] == 40
    await stack.wait_for_status(created["id"], "COMPLETED")
    evaluation = (await stack.query(EVALUATION, id=created["id"], first=500))[
        "evaluation"]

    assert evaluation["completedCases"] == 40
    assert evaluation["failedCases"] == 0
    results = [edge["node"] for edge in evaluation["results"]["edges"]]
    assert len(results) == evaluation["results"]["totalCount"] == 40
    assert len({r["testCase"]["id"] for r in results}) == 40
    passed = [r for r in results if r["passed"]]
    # The simulator answers right 70% of the time, wrong numbers otherwise.
    assert 0 < len(passed) < 40
    assert evaluation["passedCases"] == len(passed)
    assert evaluation["score"] == pytest.approx(len(passed) / 40)
    assert evaluation["passRate"] == pytest.approx(len(passed) / 40)
    assert all(r["latencyMs"] is not None and r["promptTokens"] > 0 for r in results)
    assert evaluation["startedAt"] and evaluation["completedAt"]
    assert evaluation["testSet"] == {"id": test_set["id"], "name": test_set["name"]}


async def test_category_scores_agree_with_the_results_of_each_category(stack):
    test_set = await create_test_set(stack, arithmetic_cases(30))
    created = await create_evaluation(stack, test_set["id"])
    await stack.wait_for_status(created["id"], "COMPLETED")

    evaluation = (await stack.query(EVALUATION, id=created["id"], first=500))[
        "evaluation"]

    by_category: dict[str, list[bool]] = {}
    for edge in evaluation["results"]["edges"]:
        node = edge["node"]
        by_category.setdefault(node["testCase"]["category"]["name"], []).append(
            node["passed"])
    scores = {s["category"]["name"]: s for s in evaluation["categoryScores"]}
    assert set(scores) == {"sums", "products"}
    for name, outcomes in by_category.items():
        assert scores[name]["completedCases"] == len(outcomes) == 15
        assert scores[name]["passRate"] == pytest.approx(sum(outcomes) / 15)


async def test_results_filter_by_passed_and_category_and_page_by_cursor(stack):
    test_set = await create_test_set(stack, arithmetic_cases(20))
    created = await create_evaluation(stack, test_set["id"])
    await stack.wait_for_status(created["id"], "COMPLETED")
    sums = next(c["id"] for c in test_set["categories"] if c["name"] == "sums")

    failed = (await stack.query(EVALUATION, id=created["id"], passed=False,
                                first=500))["evaluation"]["results"]
    in_sums = (await stack.query(EVALUATION, id=created["id"], categoryId=sums,
                                 first=500))["evaluation"]["results"]
    first_page = (await stack.query(EVALUATION, id=created["id"], first=5))[
        "evaluation"]["results"]
    second_page = (await stack.query(
        EVALUATION, id=created["id"], first=5,
        after=first_page["pageInfo"]["endCursor"]))["evaluation"]["results"]

    assert all(e["node"]["passed"] is False for e in failed["edges"])
    assert {e["node"]["testCase"]["category"]["name"] for e in in_sums["edges"]} == {
        "sums"}
    assert in_sums["totalCount"] == 10
    first_ids = {e["node"]["id"] for e in first_page["edges"]}
    second_ids = {e["node"]["id"] for e in second_page["edges"]}
    assert len(first_ids) == len(second_ids) == 5
    assert not first_ids & second_ids


async def test_evaluations_list_filters_by_test_set_and_status(stack):
    test_set = await create_test_set(stack, arithmetic_cases(3))
    created = await create_evaluation(stack, test_set["id"])
    await stack.wait_for_status(created["id"], "COMPLETED")

    data = await stack.query(
        "query($ts: ID!) { evaluations(testSetId: $ts, status: COMPLETED) {"
        " totalCount edges { node { id status } } }"
        " testSet(id: $ts) { evaluations { totalCount edges { node { id } } } } }",
        ts=test_set["id"])

    assert data["evaluations"]["totalCount"] == 1
    assert data["evaluations"]["edges"][0]["node"] == {"id": created["id"],
                                                       "status": "COMPLETED"}
    assert data["testSet"]["evaluations"]["edges"][0]["node"]["id"] == created["id"]


@pytest.mark.parametrize(("overrides", "where"), [
    ({"promptTemplate": "Q: {{ question }} {{ missing }}"}, "'missing'"),
    ({"promptTemplate": "Q: {{ question "}, "input.promptTemplate"),
    ({"promptTemplate": "{{ ''.__class__.__mro__ }}"}, "input.promptTemplate"),
    ({"scorer": {"type": "REGEX", "options": {"pattern": "(unclosed"}}},
     "input.scorer.options.pattern"),
    ({"scorer": {"type": "REGEX"}}, "input.scorer.options.pattern"),
    ({"scorer": {"type": "NUMERIC", "options": {"tolerance": "abc"}}},
     "input.scorer.options.tolerance"),
    ({"scorer": {"type": "EXACT_MATCH", "options": {"bogus": 1}}},
     "input.scorer.options"),
    ({"concurrency": 0}, "input.concurrency"),
    ({"concurrency": 100_000}, "input.concurrency"),
    ({"temperature": -1.0}, "input.temperature"),
    ({"maxTokens": 0}, "input.maxTokens"),
    ({"model": "  "}, "input.model"),
    ({"testSetId": "garbage"}, "input.testSetId"),
])
async def test_bad_evaluations_are_refused_before_anything_is_stored(
        stack, overrides, where):
    test_set = await create_test_set(stack, arithmetic_cases(3))

    with pytest.raises(GraphQLError) as error:
        await create_evaluation(stack, test_set["id"], **overrides)

    assert error.value.code == "BAD_USER_INPUT"
    assert where in error.value.message
    data = await stack.query("query($ts: ID!) { evaluations(testSetId: $ts) {"
                             " totalCount } }", ts=test_set["id"])
    assert data["evaluations"]["totalCount"] == 0


async def test_a_missing_variable_names_the_variable_and_a_case_without_it(stack):
    cases = arithmetic_cases(2) + [{"input": {"other": "x"}, "expectedOutput": "1"}]
    test_set = await create_test_set(stack, cases)

    with pytest.raises(GraphQLError) as error:
        await create_evaluation(stack, test_set["id"])

    assert "'question'" in error.value.message
    assert "tc_" in error.value.message


async def test_scorers_that_need_an_expected_output_refuse_cases_without_one(stack):
    test_set = await create_test_set(stack, [{"input": {"question": "hi"}}])

    with pytest.raises(GraphQLError) as error:
        await create_evaluation(stack, test_set["id"])
    regex = await create_evaluation(
        stack, test_set["id"], scorer={"type": "REGEX", "options": {"pattern": "."}})

    assert error.value.code == "BAD_USER_INPUT"
    assert "expected output" in error.value.message
    assert regex["status"] == "QUEUED"


async def test_an_empty_or_unknown_test_set_is_refused(stack):
    empty = await create_test_set(stack, [])

    with pytest.raises(GraphQLError) as no_cases:
        await create_evaluation(stack, empty["id"])
    with pytest.raises(GraphQLError) as unknown:
        await create_evaluation(stack, "ts_999999999")

    assert no_cases.value.code == "BAD_USER_INPUT"
    assert "no test cases" in no_cases.value.message
    assert unknown.value.code == "NOT_FOUND"


async def test_cancelling_a_finished_evaluation_is_a_conflict_that_changes_nothing(
        stack):
    test_set = await create_test_set(stack, arithmetic_cases(3))
    created = await create_evaluation(stack, test_set["id"])
    before = await stack.wait_for_status(created["id"], "COMPLETED")
    cancel = "mutation($id: ID!) { cancelEvaluation(id: $id) { status } }"

    with pytest.raises(GraphQLError) as error:
        await stack.query(cancel, id=created["id"])
    with pytest.raises(GraphQLError) as unknown:
        await stack.query(cancel, id="ev_999999999")

    assert error.value.code == "CONFLICT"
    assert unknown.value.code == "NOT_FOUND"
    assert await stack.wait_for_status(created["id"], "COMPLETED") == before


async def test_a_test_set_with_a_queued_evaluation_cannot_be_deleted(settings,
                                                                     model_url):
    from tests.stack import running_stack

    # No worker: the evaluation stays QUEUED.
    quiet = settings.replace(redis_prefix=settings.redis_prefix + "-noworker",
                             openai_base_url=model_url)
    async with running_stack(quiet, with_worker=False) as stack:
        test_set = await create_test_set(stack, arithmetic_cases(2))
        created = await create_evaluation(stack, test_set["id"])

        with pytest.raises(GraphQLError) as error:
            await stack.query("mutation($id: ID!) { deleteTestSet(id: $id) }",
                              id=test_set["id"])
        cancelled = await stack.query(
            "mutation($id: ID!) { cancelEvaluation(id: $id) { status } }",
            id=created["id"])
        deleted = await stack.query("mutation($id: ID!) { deleteTestSet(id: $id) }",
                                    id=test_set["id"])

    assert error.value.code == "CONFLICT"
    assert cancelled["cancelEvaluation"]["status"] == "CANCELLED"
    assert deleted["deleteTestSet"] == test_set["id"]

