"""Queries and mutations of evaluations."""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated

import strawberry
from redis.exceptions import RedisError
from strawberry.types import Info

from app import events, ids, validation
from app.auth import EDITOR
from app.context import Context
from app.errors import ApiError, BadUserInput, Conflict, NotFound
from app.jobs import queue
from app.resolvers.access import require
from app.resolvers.idempotency import key_of
from app.schema.common import (
    After,
    Connection,
    First,
    build_connection,
    page_size,
)
from app.schema.evaluations import Evaluation, EvaluationStatus
from app.schema.inputs import CreateEvaluationInput
from app.scoring import ScorerOptionsError, build_scorer
from app.store import evaluations as evaluation_store
from app.store import test_sets as test_set_store
from app.store.evaluations import NewEvaluation
from app.templates import (
    PromptTemplate,
    TemplateError,
    TemplateRefused,
    compile_template,
)

log = logging.getLogger(__name__)

# Test cases a new evaluation's template is tried on before it is stored,
# and the time all those renders may take together. The trial runs in the
# API's event loop, so it must stay short: a usual template renders in
# microseconds.
TRIAL_RENDERS = 20
TRIAL_TIME_S = 0.1
# Never less for one case, so that a busy API does not refuse a template for
# the time other work took before it.
TRIAL_CASE_MIN_S = 0.02

EvaluationId = Annotated[strawberry.ID, strawberry.argument(
    description="The evaluation's id.")]
NewEvaluationInput = Annotated[CreateEvaluationInput, strawberry.argument(
    description="The evaluation to run.")]


@strawberry.type
class EvaluationQueries:
    @strawberry.field(description="Evaluations, newest first, optionally filtered.")
    async def evaluations(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        status: Annotated[EvaluationStatus | None, strawberry.argument(
            description="Only evaluations in this status.")] = None,
        test_set_id: Annotated[strawberry.ID | None, strawberry.argument(
            description="Only evaluations of this test set.")] = None,
    ) -> Connection[Evaluation]:
        test_set = (None if test_set_id is None else
                    ids.decode(ids.Kind.TEST_SET, test_set_id, field="testSetId"))
        return await _evaluation_page(info.context, first, after,
                                     status=status.value if status else None,
                                     test_set_id=test_set)

    @strawberry.field(description="One evaluation; null if there is none with this id.")
    async def evaluation(self, info: Info[Context, None],
                         id: EvaluationId) -> Evaluation | None:
        row_id = ids.decode(ids.Kind.EVALUATION, id, field="id")
        row = await info.context.loaders.evaluation.load(row_id)
        return Evaluation.from_row(row) if row else None


@strawberry.type
class EvaluationMutations:
    @strawberry.mutation(description="Stores the evaluation as QUEUED, enqueues"
                         " its job and returns at once.")
    async def create_evaluation(self, info: Info[Context, None],
                                input: NewEvaluationInput) -> Evaluation:
        context = info.context
        caller = require(context, EDITOR)
        new = await _validated(context, input)
        key = key_of("createEvaluation", input, caller.workspace_id,
                     context.settings)

        row, created = await evaluation_store.create_evaluation(context.pool, new,
                                                                key)
        if created:
            log.info("evaluation %s queued in workspace %s: test set %s, %d cases,"
                     " model %s", row.id, row.workspace_id, row.test_set_id,
                     row.total_cases, row.model)
            await _enqueue(context, row.id, row.attempt)
        else:
            log.info("evaluation %s returned again for a repeated idempotency key",
                     row.id)
        return Evaluation.from_row(row)

    @strawberry.mutation(description="Stops a QUEUED or IN_PROGRESS evaluation;"
                         " results already stored are kept.")
    async def cancel_evaluation(self, info: Info[Context, None],
                                id: EvaluationId) -> Evaluation:
        context = info.context
        caller = require(context, EDITOR)
        row_id = ids.decode(ids.Kind.EVALUATION, id, field="id")

        changed = await evaluation_store.change_status(
            context.pool, row_id, "CANCELLED", from_statuses=("QUEUED", "IN_PROGRESS"),
            workspace_id=caller.workspace_id)
        if changed is None:
            row = await evaluation_store.get_evaluation(
                context.pool, row_id, workspace_id=caller.workspace_id)
            if row is None:
                raise NotFound("id: no evaluation with this id")
            raise Conflict(f"id: the evaluation is already {row.status}")

        row, event = changed
        await events.publish(context.services.arq, context.settings.redis_prefix,
                             [event])
        log.info("evaluation %s cancelled", row_id)
        return Evaluation.from_row(row)


    @strawberry.mutation(description=(
        "Runs a finished evaluation again as a new attempt: it is QUEUED once"
        " more and runs the test cases that have no result, and (unless"
        " retryFailed is false) those whose result is an error, which are"
        " deleted first. Scored results are kept. Whatever became of the"
        " earlier attempt's job, it cannot run alongside the new one. CONFLICT"
        " for an evaluation that is queued or running, or COMPLETED with"
        " nothing to run again."))
    async def rerun_evaluation(
        self, info: Info[Context, None], id: EvaluationId,
        retry_failed: Annotated[bool, strawberry.argument(
            description="Also run again the cases whose result is an error"
            " (a timeout, say).")] = True,
    ) -> Evaluation:
        context = info.context
        caller = require(context, EDITOR)
        row_id = ids.decode(ids.Kind.EVALUATION, id, field="id")

        try:
            queued = await evaluation_store.queue_again(
                context.pool, caller.workspace_id, row_id,
                context.settings.redis_prefix, retry_failed=retry_failed)
        except evaluation_store.NothingToRun as exc:
            raise Conflict(f"id: {exc}; nothing to run again") from None
        if queued is None:
            raise NotFound("id: no evaluation with this id")

        row, event = queued
        await events.publish(context.services.arq, context.settings.redis_prefix,
                             [event])
        log.info("evaluation %s queued again as attempt %s: %d of %d cases left",
                 row_id, row.attempt, row.total_cases - row.completed_cases,
                 row.total_cases)
        await _enqueue(context, row.id, row.attempt)
        return Evaluation.from_row(row)


async def _validated(context: Context, input: CreateEvaluationInput) -> NewEvaluation:
    """Everything that can be checked before anything is stored."""
    test_set_id = ids.decode(ids.Kind.TEST_SET, input.test_set_id,
                             field="input.testSetId")
    if await context.loaders.test_set.load(test_set_id) is None:
        raise NotFound("input.testSetId: no test set with this id")
    if not await context.loaders.case_count_of_test_set.load(test_set_id):
        raise BadUserInput("input.testSetId: the test set has no test cases")

    template = _template(input.prompt_template)
    missing = await test_set_store.missing_variables(
        context.pool, test_set_id, sorted(template.variables))
    if missing:
        variable, case_id = missing[0]
        raise BadUserInput(
            f"input.promptTemplate: the variable {variable!r} is missing from the"
            f" input of test case {ids.encode(ids.Kind.TEST_CASE, case_id)}")
    await _try_template(context, test_set_id, template)

    scorer_options = validation.json_value(input.scorer.options or {},
                                           "input.scorer.options")
    if not isinstance(scorer_options, dict):
        raise BadUserInput("input.scorer.options: must be a JSON object")
    try:
        scorer = build_scorer(input.scorer.type.value, scorer_options)
    except ScorerOptionsError as exc:
        raise BadUserInput(f"input.scorer.{exc.path}: {exc}") from None
    if scorer.needs_expected_output:
        case_id = await test_set_store.first_case_without_expected_output(
            context.pool, test_set_id)
        if case_id is not None:
            raise BadUserInput(
                f"input.scorer.type: {input.scorer.type.value} needs an expected"
                f" output, and test case {ids.encode(ids.Kind.TEST_CASE, case_id)}"
                " has none")

    return NewEvaluation(
        workspace_id=context.workspace_id,
        test_set_id=test_set_id,
        name=validation.text(input.name, "input.name",
                             max_length=validation.MAX_NAME_LENGTH),
        model=validation.text(input.model, "input.model", required=True,
                              max_length=validation.MAX_NAME_LENGTH),
        prompt_template=template.source,
        system_prompt=validation.text(input.system_prompt, "input.systemPrompt"),
        temperature=_temperature(input.temperature),
        max_tokens=_positive(input.max_tokens, "input.maxTokens", 1_000_000),
        scorer_type=input.scorer.type.value,
        scorer_options=scorer_options,
        concurrency=_positive(input.concurrency, "input.concurrency",
                              context.settings.max_concurrency)
        or context.settings.default_concurrency,
        queue_prefix=context.settings.redis_prefix,
    )


def _template(source: str):
    validation.text(source, "input.promptTemplate")
    try:
        return compile_template(source)
    except TemplateError as exc:
        raise BadUserInput(f"input.promptTemplate: {exc}") from None


async def _try_template(context: Context, test_set_id: int,
                        template: PromptTemplate) -> None:
    """Render the template for the first test cases, so that one the sandbox
    refuses only with some inputs (a computed `x[name]` reaching a private
    attribute, say), or one that takes far too long, is refused now rather
    than failing every case later. Other rendering errors are left to the
    run: they may hit a few cases."""
    pages = await test_set_store.page_test_cases(
        context.pool, context.workspace_id, [test_set_id], TRIAL_RENDERS, None)
    deadline = time.perf_counter() + TRIAL_TIME_S
    for case in pages[test_set_id]:
        try:
            template.render(case.input, time_limit_s=max(
                deadline - time.perf_counter(), TRIAL_CASE_MIN_S))
        except TemplateRefused as exc:
            raise BadUserInput(
                f"input.promptTemplate: with the input of test case"
                f" {ids.encode(ids.Kind.TEST_CASE, case.id)}: {exc}") from None
        except TemplateError:
            continue


def _temperature(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 2):
        raise BadUserInput(f"input.temperature: must be between 0 and 2, got {value}")
    return value


def _positive(value: int | None, path: str, maximum: int) -> int | None:
    if value is not None and not 1 <= value <= maximum:
        raise BadUserInput(f"{path}: must be between 1 and {maximum}, got {value}")
    return value


async def _enqueue(context: Context, evaluation_id: int, attempt: int) -> None:
    try:
        await queue.enqueue_evaluation(context.services.arq,
                                       context.settings.redis_prefix,
                                       evaluation_id, attempt)
    except (RedisError, OSError) as exc:
        # The evaluation must not sit QUEUED with no job behind it.
        log.error("could not queue evaluation %s: %s", evaluation_id, exc)
        await evaluation_store.change_status(
            context.pool, evaluation_id, "FAILED", from_statuses=("QUEUED",),
            error="the job queue (Redis) was unavailable when it was created")
        raise ApiError(
            f"the job queue is unavailable; evaluation"
            f" {ids.encode(ids.Kind.EVALUATION, evaluation_id)} was stored as FAILED"
        ) from exc


async def _evaluation_page(
    context: Context,
    first: int | None,
    after: str | None,
    *,
    status: str | None = None,
    test_set_id: int | None = None,
) -> Connection[Evaluation]:
    """A page of evaluations, newest first."""
    limit = page_size(first, context.settings.max_page_size)
    before_id = ids.decode_cursor(after, maximum=ids.MAX_ROW_ID)

    rows = await evaluation_store.list_evaluations(
        context.pool, context.workspace_id, limit + 1, before_id, status,
        test_set_id)
    total = await evaluation_store.count_evaluations(
        context.pool, context.workspace_id, status, test_set_id)
    return build_connection(rows, limit, total, lambda r: r.id, Evaluation.from_row)
