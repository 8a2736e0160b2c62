"""The per-request context of the GraphQL API and its data loaders.

Each loader answers one "things by key" question with one SQL statement per
batch, so a list of a hundred evaluations costs the same few queries as one.
Loaders do not cache: a websocket connection lives for hours and shares one
context, and evaluations change under it all the time. What never changes
once made is the exception: test cases (SharedTestCases, for the whole
process: every progress event that selects its result's test case would
otherwise cost a query) and categories (per request).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
from arq.connections import ArqRedis
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from app.events import ProgressHub
from app.settings import Settings
from app.store import evaluations as evaluation_store
from app.store import test_sets as test_set_store
from app.store.rows import (
    CategoryRow,
    CategoryScoreRow,
    EvaluationRow,
    ResultRow,
    TestCaseRow,
    TestSetRow,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedTestCases:
    """Test cases by id, shared by every request and subscription of a process.

    A test case never changes once stored: it is only deleted, with its test
    set and every result that points at it. So unlike anything else it can be
    kept across requests, and a hundred subscribers of one run that each
    select `result { testCase }` cost one query per case instead of one per
    event each. At most `max_size` are kept (least recently used go first):
    a bound on their number, not their size, so very large inputs make it
    hold more memory. Lookups that arrive together are fetched in one query,
    and a case being fetched is waited for rather than fetched again.
    """

    def __init__(self, pool: asyncpg.Pool, max_size: int = 10_000) -> None:
        self.max_size = max_size
        self._rows: OrderedDict[int, TestCaseRow] = OrderedDict()
        self._fetching: dict[int, asyncio.Future[TestCaseRow | None]] = {}
        self._loader = _by_id(pool, test_set_store.test_cases_by_ids)

    async def load(self, test_case_id: int) -> TestCaseRow | None:
        row = self._rows.get(test_case_id)
        if row is not None:
            self._rows.move_to_end(test_case_id)
            return row
        fetching = self._fetching.get(test_case_id)
        if fetching is None:
            fetching = asyncio.ensure_future(self._loader.load(test_case_id))
            self._fetching[test_case_id] = fetching
            fetching.add_done_callback(
                lambda done: self._fetched(test_case_id, done))
        # One waiter going away (a client leaving) must not cancel the fetch
        # the others wait on.
        return await asyncio.shield(fetching)

    def _fetched(self, test_case_id: int,
                 done: asyncio.Future[TestCaseRow | None]) -> None:
        del self._fetching[test_case_id]
        if done.cancelled() or done.exception() is not None:
            return
        row = done.result()
        if row is None:
            return
        self._rows[test_case_id] = row
        if len(self._rows) > self.max_size:
            self._rows.popitem(last=False)


@dataclasses.dataclass(frozen=True)
class Services:
    """What the API process holds for its whole life (see app/server.py)."""

    settings: Settings
    pool: asyncpg.Pool
    arq: ArqRedis
    hub: ProgressHub
    test_cases: SharedTestCases


class Loaders:
    def __init__(self, pool: asyncpg.Pool, test_cases: SharedTestCases) -> None:
        self.test_set = _by_id(pool, test_set_store.test_sets_by_ids)
        # A category never changes once made (it goes only with its test
        # set), so this one may remember: the categories of test cases and of
        # category scores, asked for at different moments, cost one query.
        self.category = _by_id(pool, test_set_store.categories_by_ids, cache=True)
        self.test_case = test_cases
        self.evaluation = _by_id(pool, evaluation_store.evaluations_by_ids)
        self.categories_of_test_set = _grouped(
            pool, test_set_store.categories_by_test_set_ids, "test_set_id")
        self.scores_of_evaluation = _grouped(
            pool, evaluation_store.category_scores, "evaluation_id")
        self.case_count_of_test_set = _counted(
            pool, test_set_store.count_test_cases)
        self.case_count_of_category = _counted(
            pool, test_set_store.count_cases_by_category)

        self.test_case_page = _paged(
            lambda ids, limit, after, category: test_set_store.page_test_cases(
                pool, ids, limit, after, category),
            lambda ids, limit, after, category: test_set_store.count_test_cases(
                pool, ids, category))
        self.result_page = _paged(
            lambda ids, limit, after, passed, category: evaluation_store.page_results(
                pool, ids, limit, after, passed, category),
            lambda ids, limit, after, passed, category:
                evaluation_store.count_results(pool, ids, passed, category))
        self.evaluation_page_of_test_set = _paged(
            lambda ids, limit, before: evaluation_store.page_evaluations_of_test_sets(
                pool, ids, limit, before),
            lambda ids, limit, before:
                evaluation_store.count_evaluations_of_test_sets(pool, ids))

    test_set: DataLoader[int, TestSetRow | None]
    category: DataLoader[int, CategoryRow | None]
    test_case: SharedTestCases
    evaluation: DataLoader[int, EvaluationRow | None]
    categories_of_test_set: DataLoader[int, list[CategoryRow]]
    scores_of_evaluation: DataLoader[int, list[CategoryScoreRow]]
    case_count_of_test_set: DataLoader[int, int]
    case_count_of_category: DataLoader[int, int]
    # Keyed by (row id, page size + 1, cursor position, filters...); answers
    # (rows of the page, total count).
    test_case_page: DataLoader[tuple, tuple[list[TestCaseRow], int]]
    result_page: DataLoader[tuple, tuple[list[ResultRow], int]]
    evaluation_page_of_test_set: DataLoader[tuple, tuple[list[EvaluationRow], int]]


@dataclasses.dataclass
class Context:
    services: Services
    request: Request | WebSocket
    loaders: Loaders

    @property
    def pool(self) -> asyncpg.Pool:
        return self.services.pool

    @property
    def settings(self) -> Settings:
        return self.services.settings


def _by_id(pool: asyncpg.Pool,
           fetch: Callable[[asyncpg.Pool, Sequence[int]], Awaitable[list[Any]]],
           *, cache: bool = False) -> DataLoader[int, Any]:
    async def load(ids: list[int]) -> list[Any]:
        rows = {row.id: row for row in await fetch(pool, ids)}
        return [rows.get(i) for i in ids]

    return DataLoader(load, cache=cache)


def _grouped(pool: asyncpg.Pool,
             fetch: Callable[[asyncpg.Pool, Sequence[int]], Awaitable[Iterable[Any]]],
             key_field: str) -> DataLoader[int, list[Any]]:
    async def load(keys: list[int]) -> list[list[Any]]:
        groups: dict[int, list[Any]] = defaultdict(list)
        for row in await fetch(pool, keys):
            groups[getattr(row, key_field)].append(row)
        return [groups.get(key, []) for key in keys]

    return DataLoader(load, cache=False)


def _counted(pool: asyncpg.Pool,
             fetch: Callable[[asyncpg.Pool, Sequence[int]], Awaitable[dict[int, int]]],
             ) -> DataLoader[int, int]:
    async def load(keys: list[int]) -> list[int]:
        counts = await fetch(pool, keys)
        return [counts.get(key, 0) for key in keys]

    return DataLoader(load, cache=False)


def _paged(fetch_pages: Callable[..., Awaitable[dict[int, list[Any]]]],
           fetch_counts: Callable[..., Awaitable[dict[int, int]]],
           ) -> DataLoader[tuple, tuple[list[Any], int]]:
    """Pages of a nested list for many parents: one statement for the pages
    and one for the counts per distinct set of page arguments."""

    async def load(keys: list[tuple]) -> list[tuple[list[Any], int]]:
        parents_by_arguments: dict[tuple, list[int]] = defaultdict(list)
        for parent_id, *arguments in keys:
            parents_by_arguments[tuple(arguments)].append(parent_id)

        answers = {}
        for arguments, parent_ids in parents_by_arguments.items():
            parent_ids = list(dict.fromkeys(parent_ids))
            pages = await fetch_pages(parent_ids, *arguments)
            counts = await fetch_counts(parent_ids, *arguments)
            for parent_id in parent_ids:
                answers[(parent_id, *arguments)] = (pages[parent_id],
                                                    counts.get(parent_id, 0))
        return [answers[key] for key in keys]

    return DataLoader(load, cache=False)
