"""GraphQL input types of the mutations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import strawberry
from strawberry.scalars import JSON

from app.schema.evaluations import ScorerType


@strawberry.input(description="A category to create with a test set.")
class CategoryInput:
    name: str = strawberry.field(description="Unique within the test set.")
    description: str | None = strawberry.field(
        default=None, description="Free text.")


@strawberry.input(description="One test case to store.")
class TestCaseInput:
    input: JSON = strawberry.field(
        description='Variables for the prompt template, e.g. {question: "..."};'
        " must be a JSON object.")
    expected_output: str | None = strawberry.field(
        default=None, description="What a correct answer is scored against.")
    category: str | None = strawberry.field(
        default=None,
        description="Name of a category of this test set; created if it is not listed.")
    metadata: JSON | None = strawberry.field(
        default=None, description="Free-form data kept with the case.")


def _test_case_from_input(cls: type[TestCaseInput], value: Mapping[str, Any],
                          _context: object) -> TestCaseInput:
    # Strawberry otherwise converts an input object field by field, working out
    # each field's type again for every object: for a batch of thousands of
    # test cases that was most of the server's time. Every field here is a
    # scalar that graphql-core has already coerced, so the case is built as is.
    return cls(input=value["input"], expected_output=value.get("expectedOutput"),
               category=value.get("category"), metadata=value.get("metadata"))


# Strawberry's hook for types that build their own value from an input.
TestCaseInput.__strawberry_definition__.from_input = _test_case_from_input


@strawberry.input(description="A new test set with its categories and cases.")
class CreateTestSetInput:
    name: str = strawberry.field(
        description="Unique among the test sets of its workspace.")
    description: str | None = strawberry.field(default=None, description="Free text.")
    categories: list[CategoryInput] | None = strawberry.field(
        default=None, description="Categories to create, with descriptions.")
    test_cases: list[TestCaseInput] | None = strawberry.field(
        default=None, description="Its test cases, in order"
        " (more can be added with appendTestCases).")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Chosen by the client to make retrying safe: a request with"
        " a key used before (within ASSAY_IDEMPOTENCY_KEY_HOURS, 24 by default)"
        " returns the test set the first one created instead of creating"
        " another; one whose input differs is a CONFLICT. Up to 200 characters.")


@strawberry.input(description="How answers are scored.")
class ScorerInput:
    type: ScorerType = strawberry.field(description="Which scorer.")
    options: JSON | None = strawberry.field(
        default=None,
        description='Type-specific options, e.g. {pattern: "..."} for REGEX,'
        " {tolerance: 0.01} for NUMERIC, {ignoreCase: true} for EXACT_MATCH.")


@strawberry.input(description="A model configuration to run over a test set.")
class CreateEvaluationInput:
    test_set_id: strawberry.ID = strawberry.field(description="The test set to run.")
    name: str | None = strawberry.field(default=None, description="A label.")
    model: str = strawberry.field(description="Model name sent to the endpoint.")
    prompt_template: str = strawberry.field(
        description="Jinja-style template over a test case's input,"
        ' e.g. "Q: {{ question }}\\nA:".')
    system_prompt: str | None = strawberry.field(
        default=None, description="Sent as the system message.")
    temperature: float | None = strawberry.field(
        default=None, description="Sampling temperature, 0 to 2.")
    max_tokens: int | None = strawberry.field(
        default=None, description="Cap on the answer's tokens.")
    scorer: ScorerInput = strawberry.field(description="How answers are scored.")
    concurrency: int | None = strawberry.field(
        default=None,
        description="How many model calls may be in flight at once for this"
        " evaluation on each worker running it (default 8); a large evaluation"
        " is shared by up to ASSAY_WORKERS_PER_EVALUATION workers.")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Chosen by the client to make retrying safe: a request with"
        " a key used before (within ASSAY_IDEMPOTENCY_KEY_HOURS, 24 by default)"
        " returns the evaluation the first one created and queues nothing"
        " more; one whose input differs is a CONFLICT. Up to 200 characters.")
