"""Every main query of the store has an index to use.

Each store function is run on a connection that logs its statements; each
statement is then explained, with the same arguments, with sequential scans
priced out of reach (enable_seqscan = off). A plan that still scans a table
from end to end has no index it could use: on a test set of a million cases
that is a query that reads them all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from app.store import api_keys as key_store
from app.store import evaluations as evaluation_store
from app.store import test_sets as test_set_store
from tests.factories import arithmetic_cases, create_evaluation, create_test_set


def _queries(test_set: int, category: int, evaluation: int,
             workspace: int) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    """The store's reads, by name, each run on a connection."""
    return {
        "list_test_sets": lambda c: test_set_store.list_test_sets(
            c, workspace, 51, None),
        "count_test_sets": lambda c: test_set_store.count_test_sets(c, workspace),
        "test_sets_by_ids": lambda c: test_set_store.test_sets_by_ids(
            c, workspace, [test_set]),
        "categories_by_test_set_ids": lambda c:
            test_set_store.categories_by_test_set_ids(c, workspace, [test_set]),
        "count_cases_by_category": lambda c: test_set_store.count_cases_by_category(
            c, workspace, [category]),
        "test_cases_by_ids": lambda c: test_set_store.test_cases_by_ids(
            c, workspace, [1, 2, 3]),
        "page_test_cases": lambda c: test_set_store.page_test_cases(
            c, workspace, [test_set], 51, 10, category),
        "count_test_cases": lambda c: test_set_store.count_test_cases(
            c, workspace, [test_set]),
        "evaluations_by_ids": lambda c: evaluation_store.evaluations_by_ids(
            c, workspace, [evaluation]),
        "list_evaluations": lambda c: evaluation_store.list_evaluations(
            c, workspace, 51, None, "COMPLETED"),
        "count_evaluations": lambda c: evaluation_store.count_evaluations(
            c, workspace, None, test_set),
        "page_results": lambda c: evaluation_store.page_results(
            c, workspace, [evaluation], 101, 5, False, category),
        "count_results": lambda c: evaluation_store.count_results(
            c, workspace, [evaluation], True),
        "page_evaluations_of_test_sets": lambda c:
            evaluation_store.page_evaluations_of_test_sets(
                c, workspace, [test_set], 51, None),
        "category_scores": lambda c: evaluation_store.category_scores(
            c, workspace, [evaluation]),
        "events_after": lambda c: evaluation_store.events_after(
            c, evaluation, 3, 500),
        "key_by_digest": lambda c: key_store.key_by_digest(c, "0" * 64),
    }


async def test_every_main_query_uses_an_index(stack, pool):
    test_set = await create_test_set(stack, arithmetic_cases(30))
    evaluation = await create_evaluation(stack, test_set["id"])
    await stack.wait_for_status(evaluation["id"], "COMPLETED")
    workspace = await pool.fetchval(
        "SELECT workspace_id FROM test_sets WHERE id = $1",
        int(test_set["id"].removeprefix("ts_")))
    queries = _queries(int(test_set["id"].removeprefix("ts_")),
                       int(test_set["categories"][0]["id"].removeprefix("cat_")),
                       int(evaluation["id"].removeprefix("ev_")), workspace)

    full_scans = {}
    async with pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        try:
            for name, run in queries.items():
                statements = await _statements_of(conn, run)
                assert statements, f"{name} ran no statement"
                scanned = [table for query, args in statements
                           for table in await _tables_scanned_whole(conn, query, args)]
                if scanned:
                    full_scans[name] = scanned
        finally:
            await conn.execute("RESET enable_seqscan")

    assert full_scans == {}


async def _statements_of(conn, run) -> list[tuple[str, tuple]]:
    logged: list[tuple[str, tuple]] = []

    def log(record) -> None:
        logged.append((record.query, record.args))

    conn.add_query_logger(log)
    try:
        await run(conn)
        await asyncio.sleep(0)  # loggers are called soon after, not at once
    finally:
        conn.remove_query_logger(log)
    return logged


async def _tables_scanned_whole(conn, query: str, args: tuple) -> list[str]:
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    scanned = []

    def walk(node: dict) -> None:
        if node.get("Node Type") == "Seq Scan":
            scanned.append(node.get("Relation Name"))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return scanned
