"""GraphQL types of evaluations, their results and their scores."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from app import ids
from app.context import Context
from app.errors import ApiError
from app.schema.common import (
    After,
    Connection,
    First,
    build_connection,
    page_size,
)
from app.schema.test_sets import Category, TestCase, TestSet
from app.store.rows import CategoryScoreRow, EvaluationRow, ResultRow


@strawberry.enum(description="Where an evaluation is in its life.")
class EvaluationStatus(enum.Enum):
    QUEUED = strawberry.enum_value(
        "QUEUED", description="Stored and waiting for a worker.")
    IN_PROGRESS = strawberry.enum_value(
        "IN_PROGRESS", description="A worker is running its test cases.")
    COMPLETED = strawberry.enum_value(
        "COMPLETED", description="Every test case has a result.")
    FAILED = strawberry.enum_value(
        "FAILED", description="The run could not go on; `error` says why.")
    CANCELLED = strawberry.enum_value(
        "CANCELLED", description="Stopped on request; stored results are kept.")


@strawberry.enum(description="How a model's output is scored against the expected one.")
class ScorerType(enum.Enum):
    EXACT_MATCH = strawberry.enum_value(
        "EXACT_MATCH",
        description="Equal after trimming whitespace (option ignoreCase).")
    CONTAINS = strawberry.enum_value(
        "CONTAINS", description="The expected output occurs in the output"
        " (option ignoreCase).")
    REGEX = strawberry.enum_value(
        "REGEX", description="The output matches options.pattern"
        " (option ignoreCase).")
    NUMERIC = strawberry.enum_value(
        "NUMERIC", description="The final numbers of output and expected output"
        " are equal within options.tolerance (absolute) or"
        " options.relativeTolerance.")


@strawberry.type(description="The scorer an evaluation uses.")
class Scorer:
    type: ScorerType = strawberry.field(description="Which scorer.")
    options: JSON = strawberry.field(description="Its options, as given.")


@strawberry.type(description="Score and pass rate of one category in an evaluation.")
class CategoryScore:
    score: float | None = strawberry.field(
        description="Mean score of its scored results; null before the first.")
    pass_rate: float | None = strawberry.field(
        description="Share of its scored results that passed; null before the first.")
    completed_cases: int = strawberry.field(
        description="How many of its cases have a result, scored or failed.")
    category_row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: CategoryScoreRow) -> CategoryScore:
        return cls(score=row.score, pass_rate=row.pass_rate,
                   completed_cases=row.completed_cases,
                   category_row_id=row.category_id)

    @strawberry.field(description="The category scored.")
    async def category(self, info: Info[Context, None]) -> Category:
        row = await info.context.loaders.category.load(self.category_row_id)
        if row is None:
            raise ApiError("category vanished while it was being read")
        return Category.from_row(row)


@strawberry.type(description="The model's answer to one test case, and its score.")
class EvaluationResult:
    id: strawberry.ID = strawberry.field(description="Opaque id of the result.")
    output: str | None = strawberry.field(
        description="What the model answered; null if the call failed.")
    score: float | None = strawberry.field(
        description="In [0, 1]; null when the result holds an error.")
    passed: bool | None = strawberry.field(
        description="Whether the scorer passed it; null when it holds an error.")
    error: str | None = strawberry.field(
        description="Why no score could be given, starting with a kind such as"
        " `rate_limited:`, `timeout:` or `upstream_error:`.")
    latency_ms: int | None = strawberry.field(
        description="How long the model call took, in milliseconds.")
    prompt_tokens: int | None = strawberry.field(
        description="Tokens in the prompt, as the model endpoint counted them.")
    completion_tokens: int | None = strawberry.field(
        description="Tokens in the answer, as the model endpoint counted them.")
    test_case_row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: ResultRow) -> EvaluationResult:
        return cls(
            id=strawberry.ID(ids.encode(ids.Kind.RESULT, row.id)), output=row.output,
            score=row.score, passed=row.passed, error=row.error,
            latency_ms=row.latency_ms, prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            test_case_row_id=row.test_case_id)

    @strawberry.field(description="The test case answered.")
    async def test_case(self, info: Info[Context, None]) -> TestCase:
        row = await info.context.loaders.test_case.load(self.test_case_row_id)
        if row is None:
            raise ApiError("test case vanished while it was being read")
        return TestCase.from_row(row)


@strawberry.type(
    description="One model configuration run over every case of a test set.")
class Evaluation:
    id: strawberry.ID = strawberry.field(description="Opaque id of the evaluation.")
    name: str | None = strawberry.field(description="A label, if given.")
    status: EvaluationStatus = strawberry.field(description="Where the run stands.")
    model: str = strawberry.field(description="The model name sent to the endpoint.")
    prompt_template: str = strawberry.field(
        description="The Jinja template rendered over each case's input.")
    system_prompt: str | None = strawberry.field(
        description="Sent as the system message, if given.")
    temperature: float | None = strawberry.field(
        description="Sampling temperature, if given.")
    max_tokens: int | None = strawberry.field(
        description="Cap on the answer's tokens, if given.")
    scorer: Scorer = strawberry.field(description="How answers are scored.")
    concurrency: int = strawberry.field(
        description="How many model calls may be in flight at once.")
    total_cases: int = strawberry.field(
        description="How many test cases the evaluation runs.")
    completed_cases: int = strawberry.field(
        description="Cases that have a result, whether scored or failed.")
    failed_cases: int = strawberry.field(
        description="Cases whose result holds an error instead of a score.")
    passed_cases: int = strawberry.field(
        description="Scored cases that passed.")
    score: float | None = strawberry.field(
        description="Mean score over the scored results;"
        " null until the first result is scored.")
    pass_rate: float | None = strawberry.field(
        description="Share of scored results that passed; null before the first.")
    error: str | None = strawberry.field(
        description="Why the run failed, when it did.")
    last_sequence: int = strawberry.field(
        description="Sequence of its newest progress event (0 before the first).")
    created_at: datetime = strawberry.field(description="When it was created.")
    started_at: datetime | None = strawberry.field(
        description="When a worker first started it.")
    completed_at: datetime | None = strawberry.field(
        description="When it reached COMPLETED, FAILED or CANCELLED.")
    row_id: strawberry.Private[int]
    test_set_row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: EvaluationRow) -> Evaluation:
        return cls(
            id=strawberry.ID(ids.encode(ids.Kind.EVALUATION, row.id)),
            name=row.name, status=EvaluationStatus(row.status), model=row.model,
            prompt_template=row.prompt_template, system_prompt=row.system_prompt,
            temperature=row.temperature, max_tokens=row.max_tokens,
            scorer=Scorer(type=ScorerType(row.scorer_type),
                          options=row.scorer_options),
            concurrency=row.concurrency, total_cases=row.total_cases,
            completed_cases=row.completed_cases, failed_cases=row.failed_cases,
            passed_cases=row.passed_cases, score=row.score, pass_rate=row.pass_rate,
            error=row.error, last_sequence=row.last_sequence,
            created_at=row.created_at, started_at=row.started_at,
            completed_at=row.completed_at, row_id=row.id,
            test_set_row_id=row.test_set_id,
        )

    @strawberry.field(description="The test set it runs over.")
    async def test_set(self, info: Info[Context, None]) -> TestSet:
        row = await info.context.loaders.test_set.load(self.test_set_row_id)
        if row is None:
            raise ApiError("test set vanished while it was being read")
        return TestSet.from_row(row)

    @strawberry.field(description="Score and pass rate per category of the test set.")
    async def category_scores(self, info: Info[Context, None]) -> list[CategoryScore]:
        rows = await info.context.loaders.scores_of_evaluation.load(self.row_id)
        return [CategoryScore.from_row(row) for row in rows]

    @strawberry.field(description="Its results in test-case order.")
    async def results(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        passed: Annotated[bool | None, strawberry.argument(
            description="Only results that passed (true) or were scored and"
            " failed (false).")] = None,
        category_id: Annotated[strawberry.ID | None, strawberry.argument(
            description="Only the results of this category's cases.")] = None,
    ) -> Connection[EvaluationResult]:
        limit = page_size(first, info.context.settings.max_page_size)
        after_position = ids.decode_cursor(after)
        category = (None if category_id is None else
                    ids.decode(ids.Kind.CATEGORY, category_id, field="categoryId"))

        rows, total = await info.context.loaders.result_page.load(
            (self.row_id, limit + 1, after_position, passed, category))
        return build_connection(rows, limit, total, lambda r: r.position,
                                EvaluationResult.from_row)

