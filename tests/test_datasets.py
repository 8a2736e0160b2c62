"""Public evaluation sets imported with `assay import` and run end to end.

The data is read from ../shared/datasets beside the repository, never copied
into it; the tests skip, saying why, where it is not there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app.importer import command as import_command
from tests.factories import create_evaluation, unique
from tests.test_progress import PROGRESS, assert_contiguous

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(),
                                    reason=f"public datasets not found at {DATASETS}")

FIND_TEST_SET = """
query { testSets(first: 20) { edges { node {
  id name testCaseCount categories { name testCaseCount } } } } }"""


async def import_file(stack, path: Path, name: str, *options: str) -> dict:
    parser = argparse.ArgumentParser()
    import_command.add_arguments(parser)
    args = parser.parse_args([str(path), "--name", name, "--url", stack.url,
                              *options])

    assert await import_command.run(args, api_key=stack.key) == 0
    data = await stack.query(FIND_TEST_SET)
    return next(edge["node"] for edge in data["testSets"]["edges"]
                if edge["node"]["name"] == name)


async def follow_with_gql(stack, evaluation_id: str) -> list[dict]:
    """Every event of a run as a third-party client (gql) sees it."""
    from gql import Client, GraphQLRequest
    from gql.transport.websockets import WebsocketsTransport

    transport = WebsocketsTransport(url=stack.ws_url,
                                    subprotocols=["graphql-transport-ws"],
                                    init_payload=stack.init_payload)
    request = GraphQLRequest(PROGRESS, variable_values={"id": evaluation_id})
    async with Client(transport=transport) as session:
        return [data["evaluationProgress"]
                async for data in session.subscribe(request)]


@needs_datasets
async def test_truthfulqa_imports_817_cases_in_38_categories(stack):
    test_set = await import_file(
        stack, DATASETS / "truthfulqa" / "TruthfulQA.csv", unique("TruthfulQA"),
        "--input-field", "Question", "--expected-field", "Best Answer",
        "--category-field", "Category")

    assert test_set["testCaseCount"] == 817
    assert len(test_set["categories"]) == 38
    assert sum(c["testCaseCount"] for c in test_set["categories"]) == 817
    misconceptions = next(c for c in test_set["categories"]
                          if c["name"] == "Misconceptions")
    assert misconceptions["testCaseCount"] == 100


@needs_datasets
async def test_a_whole_gsm8k_run_streams_one_result_per_case(stack):
    test_set = await import_file(
        stack, DATASETS / "gsm8k" / "test.jsonl", unique("GSM8K"),
        "--input-field", "question", "--expected-field", "answer")
    assert test_set["testCaseCount"] == 1319

    created = await create_evaluation(
        stack, test_set["id"], concurrency=16,
        promptTemplate="Solve step by step; end with '#### <answer>'.\n{{ question }}")
    events = await follow_with_gql(stack, created["id"])

    snapshot, rest = events[0], events[1:]
    assert snapshot["kind"] == "SNAPSHOT"
    assert_contiguous(rest, snapshot["sequence"] + 1)
    added = [e for e in rest if e["kind"] == "RESULT_ADDED"]
    assert len(added) == 1319 - snapshot["completedCases"]
    assert rest[-1]["status"] == "COMPLETED"
    assert rest[-1]["completedCases"] == 1319
    # The simulator is right 70% of the time and NUMERIC reads "#### N".
    assert 0.6 < rest[-1]["score"] < 0.8
