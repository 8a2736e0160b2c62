"""Test data made through the API, with names unique to each call."""

from __future__ import annotations

import uuid
from typing import Any

from tests.stack import Stack

CREATE_TEST_SET = """
mutation($input: CreateTestSetInput!) {
  createTestSet(input: $input) {
    id name testCaseCount categories { id name testCaseCount }
  }
}"""

CREATE_EVALUATION = """
mutation($input: CreateEvaluationInput!) {
  createEvaluation(input: $input) { id status totalCases completedCases }
}"""


def unique(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:8]}"


def arithmetic_cases(count: int, categories: tuple[str, ...] = ("sums", "products"),
                     ) -> list[dict[str, Any]]:
    cases = []
    for i in range(count):
        category = categories[i % len(categories)]
        a, b = i + 2, i + 3
        answer = a + b if category == "sums" else a * b
        cases.append({"input": {"question": f"What is {a} {category} {b}?"},
                      "expectedOutput": str(answer), "category": category})
    return cases


async def create_test_set(stack: Stack, cases: list[dict[str, Any]],
                          name: str = "arithmetic", **extra: Any) -> dict[str, Any]:
    data = await stack.query(CREATE_TEST_SET, input={
        "name": unique(name), "testCases": cases, **extra})
    return data["createTestSet"]


async def create_evaluation(stack: Stack, test_set_id: str,
                            **overrides: Any) -> dict[str, Any]:
    data = await stack.query(CREATE_EVALUATION, input={
        "testSetId": test_set_id, "model": "assay-simulator",
        "promptTemplate": "Answer with a number only.\nQ: {{ question }}\nA:",
        "scorer": {"type": "NUMERIC"}, **overrides})
    return data["createEvaluation"]
