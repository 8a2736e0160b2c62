"""The per-request context of the GraphQL API and its data loaders.

Each loader answers one "things by key" question with one SQL statement per
batch, so a list of a hundred evaluations costs the same few queries as one.
Loaders belong to one caller's workspace: every statement they run keeps to
it, so no batch or cache can mix two workspaces' rows. Loaders do not cache:
a websocket connection lives for hours and shares one context, and
evaluations change under it all the time. What never changes
once made is the exception: test cases (SharedTestCases, for the whole
process: every progress event that selects its result's test case would
otherwise cost a query) and categories (per request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
from arq.connections import ArqRedis
from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from app.auth import Caller, RecentKeys
from app.connections import OpenConnections
from app.errors import Unauthenticated
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
    """Test cases by (workspace, id), shared by every request and subscription
    of a process.

    A test case never changes once stored: it is only deleted, with its test
    set and every result that points at it. So unlike anything else it can be
    kept across requests, and a hundred subscribers of one run that each
    select `result { testCase }` cost one query per case instead of one per
    event each. At most `max_size` are kept (least recently used go first):
    a bound on their number, not their size, so very large inputs make it
    hold more memory. Lookups that arrive together are fetched in one query,
    and a case being fetched is waited for rather than fetched again.

    The workspace is part of the key and of every fetch: a case is found only
    by a caller of the workspace it belongs to, even once it is cached.
    """

    def __init__(self, pool: asyncpg.Pool, max_size: int = 10_000) -> None:
        self.max_size = max_size
        self._rows: OrderedDict[tuple[int, int], TestCaseRow] = OrderedDict()
        self._fetching: dict[tuple[int, int],
                             asyncio.Future[TestCaseRow | None]] = {}

        async def fetch(keys: list[tuple[int, int]]) -> list[TestCaseRow | None]:
            ids_by_workspace: dict[int, list[int]] = defaultdict(list)
            for workspace_id, test_case_id in keys:
                ids_by_workspace[workspace_id].append(test_case_id)
            found = {}
            for workspace_id, ids in ids_by_workspace.items():
                for row in await test_set_store.test_cases_by_ids(
                        pool, workspace_id, ids):
                    found[(workspace_id, row.id)] = row
            return [found.get(key) for key in keys]

        self._loader: DataLoader[tuple[int, int], TestCaseRow | None] = (
            DataLoader(fetch, cache=False))

    async def load(self, workspace_id: int,
                   test_case_id: int) -> TestCaseRow | None:
        key = (workspace_id, test_case_id)
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
            return row
        fetching = self._fetching.get(key)
        if fetching is None:
            fetching = asyncio.ensure_future(self._loader.load(key))
            self._fetching[key] = fetching
            fetching.add_done_callback(lambda done: self._fetched(key, done))
        # One waiter going away (a client leaving) must not cancel the fetch
        # the others wait on.
        return await asyncio.shield(fetching)

    def _fetched(self, key: tuple[int, int],
                 done: asyncio.Future[TestCaseRow | None]) -> None:
        del self._fetching[key]
        if done.cancelled() or done.exception() is not None:
            return
        row = done.result()
        if row is None:
            return
        self._rows[key] = row
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
    connections: OpenConnections
    # Keys accepted lately (None: every request reads its key).
    recent_keys: RecentKeys | None = None
    # Who requests act as when authentication is off (ASSAY_AUTH=off).
    unauthenticated_caller: Caller | None = None


class Loaders:
    """The data loaders of one caller, all kept to the caller's workspace."""

    def __init__(self, pool: asyncpg.Pool, test_cases: SharedTestCases,
                 workspace_id: int) -> None:
        def own(fetch: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            return lambda pool, ids, *rest: fetch(pool, workspace_id, ids, *rest)

        self.test_set = _by_id(pool, own(test_set_store.test_sets_by_ids))
        # A category never changes once made (it goes only with its test
        # set), so this one may remember: the categories of test cases and of
        # category scores, asked for at different moments, cost one query.
        self.category = _by_id(pool, own(test_set_store.categories_by_ids),
                               cache=True)
        self.test_case = _OwnTestCases(test_cases, workspace_id)
        self.evaluation = _by_id(pool, own(evaluation_store.evaluations_by_ids))
        self.categories_of_test_set = _grouped(
            pool, own(test_set_store.categories_by_test_set_ids), "test_set_id")
        self.scores_of_evaluation = _grouped(
            pool, own(evaluation_store.category_scores), "evaluation_id")
        self.case_count_of_test_set = _counted(
            pool, own(test_set_store.count_test_cases))
        self.case_count_of_category = _counted(
            pool, own(test_set_store.count_cases_by_category))

        self.test_case_page = _paged(
            lambda ids, *page: own(test_set_store.page_test_cases)(pool, ids, *page),
            lambda ids, limit, after, category: own(
                test_set_store.count_test_cases)(pool, ids, category))
        self.result_page = _paged(
            lambda ids, *page: own(evaluation_store.page_results)(pool, ids, *page),
            lambda ids, limit, after, passed, category: own(
                evaluation_store.count_results)(pool, ids, passed, category))
        self.evaluation_page_of_test_set = _paged(
            lambda ids, *page: own(evaluation_store.page_evaluations_of_test_sets)(
                pool, ids, *page),
            lambda ids, limit, before: own(
                evaluation_store.count_evaluations_of_test_sets)(pool, ids))

    test_set: DataLoader[int, TestSetRow | None]
    category: DataLoader[int, CategoryRow | None]
    test_case: _OwnTestCases
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


class _OwnTestCases:
    """The shared test cases, as one workspace sees them."""

    def __init__(self, shared: SharedTestCases, workspace_id: int) -> None:
        self._shared = shared
        self._workspace_id = workspace_id

    async def load(self, test_case_id: int) -> TestCaseRow | None:
        return await self._shared.load(self._workspace_id, test_case_id)


@dataclasses.dataclass
class Context:
    """What every resolver of one request (or one websocket) sees.

    `caller` is set once the request is authenticated: for HTTP before the
    operation runs, for a websocket when its connection_init is accepted.
    Until then nothing reads data: `loaders` and `workspace_id` refuse.
    """

    services: Services
    request: Request | WebSocket
    caller: Caller | None = None
    # The connection_init payload of a websocket (Strawberry sets it).
    connection_params: Any = None
    _loaders: Loaders | None = dataclasses.field(default=None, repr=False)

    @property
    def authenticated(self) -> Caller:
        if self.caller is None:
            raise Unauthenticated("this connection has not presented an API key")
        # A websocket's key was checked when it connected: one that has
        # expired since does no more, even before the key check closes it.
        expires_at = self.caller.expires_at
        if (expires_at is not None
                and datetime.datetime.now(datetime.UTC) >= expires_at):
            raise Unauthenticated("the API key has expired")
        return self.caller

    @property
    def workspace_id(self) -> int:
        return self.authenticated.workspace_id

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.pool, self.services.test_cases,
                                    self.workspace_id)
        return self._loaders

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
