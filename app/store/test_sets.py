"""SQL for test sets, their categories and their test cases."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from app import json_text
from app.errors import Conflict, NotFound
from app.store import idempotency
from app.store.rows import (
    CategoryRow,
    NewTestCase,
    TestCaseRow,
    TestSetRow,
    columns,
    from_record,
)

_TEST_CASE_COLUMNS = columns(TestCaseRow)
_TEST_SET_COLUMNS = columns(TestSetRow)


# Every read takes the caller's workspace and answers nothing from another:
# to the caller, a row of another workspace is a row that does not exist.
def _own_test_sets(workspace_param: str) -> str:
    """The test sets among the ids in $1 that belong to the workspace in the
    parameter named."""
    return ("(SELECT id FROM test_sets WHERE id = any($1::bigint[])"
            f" AND workspace_id = {workspace_param})")


async def create_test_set(
    pool: asyncpg.Pool,
    workspace_id: int,
    name: str,
    description: str | None,
    categories: Sequence[tuple[str, str | None]],
    test_cases: Sequence[NewTestCase],
    key: idempotency.IdempotencyKey | None = None,
) -> tuple[TestSetRow, bool]:
    """Store a test set with its categories and cases, all or nothing.

    Returns it and whether it is new: with an idempotency key that an earlier
    request already used, the earlier request's test set instead."""
    async with pool.acquire() as conn, conn.transaction():
        if key is not None:
            earlier_id = await idempotency.claim(conn, key)
            if earlier_id is not None:
                return from_record(TestSetRow, await conn.fetchrow(
                    f"SELECT {_TEST_SET_COLUMNS} FROM test_sets"
                    " WHERE id = $1", earlier_id)), False
        try:
            record = await conn.fetchrow(
                "INSERT INTO test_sets (workspace_id, name, description)"
                f" VALUES ($1, $2, $3) RETURNING {_TEST_SET_COLUMNS}",
                workspace_id, name, description,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"input.name: a test set named {name!r} already exists")
        test_set = from_record(TestSetRow, record)

        await _ensure_categories(conn, test_set.id, categories)
        await _insert_test_cases(conn, test_set.id, test_cases, first_position=0)
        if key is not None:
            await idempotency.remember(conn, key, test_set_id=test_set.id)
    return test_set, True


async def append_test_cases(
    pool: asyncpg.Pool, workspace_id: int, test_set_id: int,
    test_cases: Sequence[NewTestCase],
) -> TestSetRow:
    """Add cases after the last one of a test set, all or nothing."""
    async with pool.acquire() as conn, conn.transaction():
        # Locking the test set serialises appends, so positions never collide.
        record = await conn.fetchrow(
            f"SELECT {_TEST_SET_COLUMNS} FROM test_sets"
            " WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
            test_set_id, workspace_id,
        )
        if record is None:
            raise NotFound("testSetId: no test set with this id")
        next_position = await conn.fetchval(
            "SELECT coalesce(max(position) + 1, 0) FROM test_cases"
            " WHERE test_set_id = $1",
            test_set_id,
        )
        await _insert_test_cases(conn, test_set_id, test_cases, next_position)
    return from_record(TestSetRow, record)


async def delete_test_set(pool: asyncpg.Pool, workspace_id: int,
                          test_set_id: int) -> bool:
    """Delete a test set and everything in it; False if there was none."""
    async with pool.acquire() as conn, conn.transaction():
        exists = await conn.fetchval(
            "SELECT true FROM test_sets WHERE id = $1 AND workspace_id = $2"
            " FOR UPDATE", test_set_id, workspace_id)
        if not exists:
            return False
        running = await conn.fetchval(
            "SELECT count(*) FROM evaluations WHERE test_set_id = $1"
            " AND status IN ('QUEUED', 'IN_PROGRESS')",
            test_set_id,
        )
        if running:
            raise Conflict(
                f"id: the test set has {running} queued or running evaluation(s);"
                " cancel them before deleting it"
            )
        await conn.execute("DELETE FROM test_sets WHERE id = $1", test_set_id)
    return True


async def _ensure_categories(
    conn: asyncpg.Connection,
    test_set_id: int,
    categories: Sequence[tuple[str, str | None]],
) -> None:
    if not categories:
        return
    names = [name for name, _ in categories]
    descriptions = [description for _, description in categories]
    await conn.execute(
        "INSERT INTO categories (test_set_id, name, description)"
        " SELECT $1, name, description FROM unnest($2::text[], $3::text[])"
        "   AS given(name, description)"
        " ON CONFLICT (test_set_id, name) DO UPDATE"
        "   SET description = coalesce(EXCLUDED.description,"
        "                              categories.description)",
        test_set_id, names, descriptions,
    )


async def _insert_test_cases(
    conn: asyncpg.Connection,
    test_set_id: int,
    test_cases: Sequence[NewTestCase],
    first_position: int,
) -> None:
    if not test_cases:
        return
    named = sorted({case.category for case in test_cases if case.category})
    await _ensure_categories(conn, test_set_id, [(name, None) for name in named])

    # One statement over arrays is far cheaper than a round trip per case;
    # JSON goes in as text and is cast in SQL.
    await conn.execute(
        "INSERT INTO test_cases"
        "   (test_set_id, category_id, position, input, expected_output, metadata)"
        " SELECT $1, c.id, given.position, given.input::jsonb,"
        "        given.expected_output, given.metadata::jsonb"
        " FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[])"
        "   AS given(position, input, expected_output, metadata, category)"
        " LEFT JOIN categories c"
        "   ON c.test_set_id = $1 AND c.name = given.category",
        test_set_id,
        list(range(first_position, first_position + len(test_cases))),
        [json_text.dumps(case.input) for case in test_cases],
        [case.expected_output for case in test_cases],
        [None if case.metadata is None else json_text.dumps(case.metadata)
         for case in test_cases],
        [case.category for case in test_cases],
    )


async def test_sets_by_ids(pool: asyncpg.Pool, workspace_id: int,
                           ids: Sequence[int]) -> list[TestSetRow]:
    records = await pool.fetch(
        f"SELECT {_TEST_SET_COLUMNS} FROM test_sets"
        " WHERE id = any($1::bigint[]) AND workspace_id = $2",
        ids, workspace_id,
    )
    return [from_record(TestSetRow, r) for r in records]


async def list_test_sets(
    pool: asyncpg.Pool, workspace_id: int, limit: int, before_id: int | None
) -> list[TestSetRow]:
    """Newest first; `limit` rows at most, after the cursor `before_id`."""
    records = await pool.fetch(
        f"SELECT {_TEST_SET_COLUMNS} FROM test_sets WHERE workspace_id = $3"
        " AND ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        before_id, limit, workspace_id,
    )
    return [from_record(TestSetRow, r) for r in records]


async def count_test_sets(pool: asyncpg.Pool, workspace_id: int) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM test_sets WHERE workspace_id = $1", workspace_id)


async def categories_by_test_set_ids(
    pool: asyncpg.Pool, workspace_id: int, test_set_ids: Sequence[int]
) -> list[CategoryRow]:
    records = await pool.fetch(
        "SELECT id, test_set_id, name, description FROM categories"
        f" WHERE test_set_id IN {_own_test_sets('$2')} ORDER BY name, id",
        test_set_ids, workspace_id,
    )
    return [from_record(CategoryRow, r) for r in records]


async def categories_by_ids(
    pool: asyncpg.Pool, workspace_id: int, ids: Sequence[int]
) -> list[CategoryRow]:
    records = await pool.fetch(
        "SELECT c.id, c.test_set_id, c.name, c.description FROM categories c"
        " JOIN test_sets ts ON ts.id = c.test_set_id"
        " WHERE c.id = any($1::bigint[]) AND ts.workspace_id = $2",
        ids, workspace_id,
    )
    return [from_record(CategoryRow, r) for r in records]


async def count_cases_by_category(
    pool: asyncpg.Pool, workspace_id: int, category_ids: Sequence[int]
) -> dict[int, int]:
    records = await pool.fetch(
        "SELECT tc.category_id, count(*) AS n FROM test_cases tc"
        " JOIN test_sets ts ON ts.id = tc.test_set_id"
        " WHERE tc.category_id = any($1::bigint[]) AND ts.workspace_id = $2"
        " GROUP BY tc.category_id",
        category_ids, workspace_id,
    )
    return {r["category_id"]: r["n"] for r in records}


async def test_cases_by_ids(
    pool: asyncpg.Pool, workspace_id: int, ids: Sequence[int]
) -> list[TestCaseRow]:
    records = await pool.fetch(
        f"SELECT {columns(TestCaseRow, 'tc')} FROM test_cases tc"
        " JOIN test_sets ts ON ts.id = tc.test_set_id"
        " WHERE tc.id = any($1::bigint[]) AND ts.workspace_id = $2",
        ids, workspace_id,
    )
    return [from_record(TestCaseRow, r) for r in records]


async def page_test_cases(
    pool: asyncpg.Pool,
    workspace_id: int,
    test_set_ids: Sequence[int],
    limit: int,
    after_position: int | None,
    category_id: int | None = None,
) -> dict[int, list[TestCaseRow]]:
    """A page of cases, in the order given, for each of several test sets in
    one statement."""
    records = await pool.fetch(
        f"SELECT {columns(TestCaseRow, 'tc')}"
        f" FROM {_own_test_sets('$5')} AS ts CROSS JOIN LATERAL ("
        "   SELECT * FROM test_cases WHERE test_set_id = ts.id"
        "     AND position > coalesce($2::int, -1)"
        "     AND ($3::bigint IS NULL OR category_id = $3)"
        "   ORDER BY position LIMIT $4) tc",
        list(test_set_ids), after_position, category_id, limit, workspace_id,
    )
    pages: dict[int, list[TestCaseRow]] = {i: [] for i in test_set_ids}
    for record in records:
        row = from_record(TestCaseRow, record)
        pages[row.test_set_id].append(row)
    return pages


async def count_test_cases(
    pool: asyncpg.Pool, workspace_id: int, test_set_ids: Sequence[int],
    category_id: int | None = None,
) -> dict[int, int]:
    records = await pool.fetch(
        "SELECT test_set_id, count(*) AS n FROM test_cases"
        f" WHERE test_set_id IN {_own_test_sets('$3')}"
        "   AND ($2::bigint IS NULL OR category_id = $2) GROUP BY test_set_id",
        list(test_set_ids), category_id, workspace_id,
    )
    return {r["test_set_id"]: r["n"] for r in records}


async def missing_variables(
    pool: asyncpg.Pool, test_set_id: int, variables: Sequence[str]
) -> list[tuple[str, int]]:
    """For each variable some case lacks: (variable, id of one such case)."""
    records = await pool.fetch(
        "SELECT v.name, (SELECT tc.id FROM test_cases tc"
        "                WHERE tc.test_set_id = $1 AND NOT tc.input ? v.name"
        "                ORDER BY tc.position LIMIT 1) AS case_id"
        " FROM unnest($2::text[]) AS v(name) ORDER BY v.name",
        test_set_id, list(variables),
    )
    return [(r["name"], r["case_id"]) for r in records if r["case_id"] is not None]


async def first_case_without_expected_output(
    pool: asyncpg.Pool, test_set_id: int
) -> int | None:
    return await pool.fetchval(
        "SELECT id FROM test_cases WHERE test_set_id = $1"
        " AND expected_output IS NULL ORDER BY position LIMIT 1",
        test_set_id,
    )
