"""Queries and mutations of test sets."""

from __future__ import annotations

import logging
from typing import Annotated

import strawberry
from strawberry.types import Info

from app import ids, validation
from app import json_lines as json_lines_parser
from app.auth import EDITOR
from app.context import Context
from app.errors import BadUserInput, NotFound
from app.resolvers.access import require
from app.resolvers.idempotency import key_of
from app.schema.common import (
    After,
    Connection,
    First,
    build_connection,
    page_size,
)
from app.schema.inputs import CreateTestSetInput, TestCaseInput
from app.schema.test_sets import TestSet
from app.store import test_sets as test_set_store
from app.store.rows import NewTestCase

log = logging.getLogger(__name__)

TestSetId = Annotated[strawberry.ID, strawberry.argument(
    description="The test set's id.")]
NewTestSet = Annotated[CreateTestSetInput, strawberry.argument(
    description="The test set to store.")]

@strawberry.type
class TestSetQueries:
    @strawberry.field(description="All test sets, newest first.")
    async def test_sets(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
    ) -> Connection[TestSet]:
        limit = page_size(first, info.context.settings.max_page_size)
        before_id = ids.decode_cursor(after, maximum=ids.MAX_ROW_ID)

        pool, workspace_id = info.context.pool, info.context.workspace_id
        rows = await test_set_store.list_test_sets(pool, workspace_id, limit + 1,
                                                   before_id)
        total = await test_set_store.count_test_sets(pool, workspace_id)
        return build_connection(rows, limit, total, lambda r: r.id, TestSet.from_row)

    @strawberry.field(description="One test set; null if there is none with this id.")
    async def test_set(self, info: Info[Context, None],
                       id: TestSetId) -> TestSet | None:
        row_id = ids.decode(ids.Kind.TEST_SET, id, field="id")
        row = await info.context.loaders.test_set.load(row_id)
        return TestSet.from_row(row) if row else None


@strawberry.type
class TestSetMutations:
    @strawberry.mutation(description="Stores a test set with its categories and"
                         " cases, all or nothing.")
    async def create_test_set(self, info: Info[Context, None],
                              input: NewTestSet) -> TestSet:
        caller = require(info.context, EDITOR)
        name = validation.text(input.name, "input.name", required=True,
                               max_length=validation.MAX_NAME_LENGTH)
        description = validation.text(input.description, "input.description")
        categories = _categories(input)
        cases = _test_cases(input.test_cases or [], "input.testCases",
                            info.context.settings.max_cases_per_request)
        key = key_of("createTestSet", input, caller.workspace_id,
                     info.context.settings)

        row, created = await test_set_store.create_test_set(
            info.context.pool, caller.workspace_id, name, description, categories,
            cases, key)
        if created:
            log.info("test set %s created in workspace %s: %r with %d cases",
                     row.id, caller.workspace_id, name, len(cases))
        else:
            log.info("test set %s returned again for a repeated idempotency key",
                     row.id)
        return TestSet.from_row(row)

    @strawberry.mutation(description="Adds test cases after the last one of a"
                         " test set, all or nothing.")
    async def append_test_cases(
        self, info: Info[Context, None],
        test_set_id: Annotated[strawberry.ID, strawberry.argument(
            description="The test set to add to.")],
        test_cases: Annotated[list[TestCaseInput], strawberry.argument(
            description="The cases to add, in order.")],
    ) -> TestSet:
        caller = require(info.context, EDITOR)
        row_id = ids.decode(ids.Kind.TEST_SET, test_set_id, field="testSetId")
        cases = _test_cases(test_cases, "testCases",
                            info.context.settings.max_cases_per_request)

        row = await test_set_store.append_test_cases(
            info.context.pool, caller.workspace_id, row_id, cases)
        log.info("test set %s: %d cases appended", row_id, len(cases))
        return TestSet.from_row(row)

    @strawberry.mutation(description="Adds test cases after the last one of a"
                         " test set, all or nothing, from JSON Lines text: one"
                         " test case per line, a JSON object with the fields of"
                         " TestCaseInput. The cheapest way to send many cases"
                         " (assay import sends its batches this way); an error"
                         " names the line, counting from 1.")
    async def append_test_case_lines(
        self, info: Info[Context, None],
        test_set_id: Annotated[strawberry.ID, strawberry.argument(
            description="The test set to add to.")],
        json_lines: Annotated[str, strawberry.argument(
            description='The cases, in order, e.g. {"input": {"question":'
            ' "2+2?"}, "expectedOutput": "4", "category": "sums"} on each'
            " line; blank lines are skipped.")],
    ) -> TestSet:
        caller = require(info.context, EDITOR)
        row_id = ids.decode(ids.Kind.TEST_SET, test_set_id, field="testSetId")
        cases = [NewTestCase(*fields) for fields in json_lines_parser.parse_test_cases(
            json_lines, "jsonLines", info.context.settings.max_cases_per_request)]

        row = await test_set_store.append_test_cases(
            info.context.pool, caller.workspace_id, row_id, cases)
        log.info("test set %s: %d cases appended", row_id, len(cases))
        return TestSet.from_row(row)

    @strawberry.mutation(description="Deletes a test set with its cases,"
                         " evaluations and results; returns its id.")
    async def delete_test_set(self, info: Info[Context, None],
                              id: TestSetId) -> strawberry.ID:
        caller = require(info.context, EDITOR)
        row_id = ids.decode(ids.Kind.TEST_SET, id, field="id")
        if not await test_set_store.delete_test_set(info.context.pool,
                                                    caller.workspace_id, row_id):
            raise NotFound("id: no test set with this id")
        log.info("test set %s deleted", row_id)
        return id


def _categories(input: CreateTestSetInput) -> list[tuple[str, str | None]]:
    categories: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for index, category in enumerate(input.categories or []):
        path = f"input.categories[{index}]"
        name = validation.text(category.name, f"{path}.name", required=True,
                               max_length=validation.MAX_NAME_LENGTH)
        if name in seen:
            raise BadUserInput(f"{path}.name: {name!r} is listed twice")
        seen.add(name)
        categories.append((name, validation.text(category.description,
                                                 f"{path}.description")))
    return categories


def _test_cases(given: list[TestCaseInput], path: str,
                maximum: int) -> list[NewTestCase]:
    # Larger sets are sent in batches with appendTestCases or
    # appendTestCaseLines (as `assay import` does).
    if len(given) > maximum:
        raise BadUserInput(
            f"{path}: {len(given)} test cases in one request; at most"
            f" {maximum} (send more with appendTestCases)")
    return [NewTestCase(*validation.test_case(
                case.input, case.expected_output, case.category, case.metadata,
                f"{path}[{index}]"))
            for index, case in enumerate(given)]
