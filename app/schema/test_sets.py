"""GraphQL types of test sets, their categories and their test cases."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from app import ids
from app.context import Context
from app.schema.common import (
    After,
    Connection,
    First,
    build_connection,
    page_size,
)
from app.store.rows import CategoryRow, TestCaseRow, TestSetRow

if TYPE_CHECKING:
    from app.schema.evaluations import Evaluation

EvaluationType = Annotated["Evaluation", strawberry.lazy("app.schema.evaluations")]


@strawberry.type(description="A named group of test cases within one test set.")
class Category:
    id: strawberry.ID = strawberry.field(description="Opaque id of the category.")
    name: str = strawberry.field(description="Unique within its test set.")
    description: str | None = strawberry.field(description="Free text, if given.")
    row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: CategoryRow) -> Category:
        return cls(id=strawberry.ID(ids.encode(ids.Kind.CATEGORY, row.id)),
                   name=row.name, description=row.description, row_id=row.id)

    @strawberry.field(description="How many test cases belong to this category.")
    async def test_case_count(self, info: Info[Context, None]) -> int:
        return await info.context.loaders.case_count_of_category.load(self.row_id)


@strawberry.type(description="One input for the model and the output expected of it.")
class TestCase:
    id: strawberry.ID = strawberry.field(description="Opaque id of the test case.")
    input: JSON = strawberry.field(
        description="The variables the prompt template is rendered with.")
    expected_output: str | None = strawberry.field(
        description="What a correct answer is scored against.")
    metadata: JSON | None = strawberry.field(
        description="Free-form data kept with the case (e.g. where it came from).")
    category_row_id: strawberry.Private[int | None]

    @classmethod
    def from_row(cls, row: TestCaseRow) -> TestCase:
        return cls(id=strawberry.ID(ids.encode(ids.Kind.TEST_CASE, row.id)),
                   input=row.input, expected_output=row.expected_output,
                   metadata=row.metadata, category_row_id=row.category_id)

    @strawberry.field(description="The category of the case, if it has one.")
    async def category(self, info: Info[Context, None]) -> Category | None:
        if self.category_row_id is None:
            return None
        row = await info.context.loaders.category.load(self.category_row_id)
        return Category.from_row(row) if row else None


@strawberry.type(description="A named collection of test cases, grouped in categories.")
class TestSet:
    id: strawberry.ID = strawberry.field(description="Opaque id of the test set.")
    name: str = strawberry.field(
        description="Unique among the test sets of its workspace.")
    description: str | None = strawberry.field(description="Free text, if given.")
    created_at: datetime = strawberry.field(description="When it was created.")
    row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: TestSetRow) -> TestSet:
        return cls(id=strawberry.ID(ids.encode(ids.Kind.TEST_SET, row.id)),
                   name=row.name, description=row.description,
                   created_at=row.created_at, row_id=row.id)

    @strawberry.field(description="Its categories, by name.")
    async def categories(self, info: Info[Context, None]) -> list[Category]:
        rows = await info.context.loaders.categories_of_test_set.load(self.row_id)
        return [Category.from_row(row) for row in rows]

    @strawberry.field(description="How many test cases it holds.")
    async def test_case_count(self, info: Info[Context, None]) -> int:
        return await info.context.loaders.case_count_of_test_set.load(self.row_id)

    @strawberry.field(description="Its test cases in the order they were added.")
    async def test_cases(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        category_id: Annotated[strawberry.ID | None, strawberry.argument(
            description="Only the cases of this category.")] = None,
    ) -> Connection[TestCase]:
        limit = page_size(first, info.context.settings.max_page_size)
        after_position = ids.decode_cursor(after)
        category = (None if category_id is None else
                    ids.decode(ids.Kind.CATEGORY, category_id, field="categoryId"))

        rows, total = await info.context.loaders.test_case_page.load(
            (self.row_id, limit + 1, after_position, category))
        return build_connection(rows, limit, total, lambda r: r.position,
                                TestCase.from_row)

    @strawberry.field(description="Evaluations run over this test set, newest first.")
    async def evaluations(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
    ) -> Connection[EvaluationType]:
        from app.schema.evaluations import Evaluation

        limit = page_size(first, info.context.settings.max_page_size)
        before_id = ids.decode_cursor(after, maximum=ids.MAX_ROW_ID)
        rows, total = await info.context.loaders.evaluation_page_of_test_set.load(
            (self.row_id, limit + 1, before_id))
        return build_connection(rows, limit, total, lambda r: r.id,
                                Evaluation.from_row)

