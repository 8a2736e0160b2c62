"""SQL for evaluations, their results and their progress events.

Every change an evaluation's subscribers must hear of goes through one
transaction that locks the evaluation row, changes it, bumps last_sequence and
records the progress event. The row lock is what makes sequences contiguous
and ordered as the transactions commit, and recording the event in the same
transaction is what lets a late subscriber replay exactly what was announced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import asyncpg

from app.errors import NotFound
from app.store import idempotency
from app.store.rows import (
    CategoryScoreRow,
    EvaluationRow,
    NewResult,
    ProgressEventRow,
    ResultRow,
    TestCaseRow,
    columns,
    from_record,
)

_EVALUATION_COLUMNS = columns(EvaluationRow)
_RESULT_COLUMNS = columns(ResultRow, "r")
# For joins where result columns would clash with the event's own.
_PREFIXED_RESULT_COLUMNS = columns(ResultRow, "r", prefix="r_")


def _own_evaluations(workspace_param: str) -> str:
    """The evaluations among the ids in $1 that belong to the workspace in the
    parameter named: reads of results keep to the caller's workspace."""
    return ("(SELECT id FROM evaluations WHERE id = any($1::bigint[])"
            f" AND workspace_id = {workspace_param})")


@dataclasses.dataclass(frozen=True)
class NewEvaluation:
    workspace_id: int
    test_set_id: int
    name: str | None
    model: str
    prompt_template: str
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    scorer_type: str
    scorer_options: dict[str, Any]
    concurrency: int
    # The Redis prefix of the queue it is run from (see db/schema.sql).
    queue_prefix: str | None = None


async def create_evaluation(
    pool: asyncpg.Pool, new: NewEvaluation,
    key: idempotency.IdempotencyKey | None = None,
) -> tuple[EvaluationRow, bool]:
    """Store an evaluation as QUEUED over the test set's cases as they are now.

    Returns it and whether it is new: with an idempotency key that an earlier
    request already used, the earlier request's evaluation instead."""
    async with pool.acquire() as conn, conn.transaction():
        if key is not None:
            earlier_id = await idempotency.claim(conn, key)
            if earlier_id is not None:
                return from_record(EvaluationRow, await conn.fetchrow(
                    f"SELECT {_EVALUATION_COLUMNS} FROM evaluations WHERE id = $1",
                    earlier_id)), False
        try:
            record = await _insert_evaluation(conn, new)
        except asyncpg.ForeignKeyViolationError:
            # The test set was deleted between the checks and this insert.
            raise NotFound("input.testSetId: no test set with this id") from None
        evaluation = from_record(EvaluationRow, record)
        if key is not None:
            await idempotency.remember(conn, key, evaluation_id=evaluation.id)
    return evaluation, True


async def _insert_evaluation(conn: asyncpg.Connection, new: NewEvaluation) -> Any:
    return await conn.fetchrow(
        "INSERT INTO evaluations (test_set_id, name, model, prompt_template,"
        "   system_prompt, temperature, max_tokens, scorer_type, scorer_options,"
        "   concurrency, queue_prefix, workspace_id, total_cases)"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
        "   (SELECT count(*) FROM test_cases WHERE test_set_id = $1)"
        f" RETURNING {_EVALUATION_COLUMNS}",
        new.test_set_id, new.name, new.model, new.prompt_template,
        new.system_prompt, new.temperature, new.max_tokens, new.scorer_type,
        new.scorer_options, new.concurrency, new.queue_prefix, new.workspace_id,
    )


async def evaluations_by_ids(
    pool: asyncpg.Pool, workspace_id: int | None, ids: Sequence[int]
) -> list[EvaluationRow]:
    """Evaluations of one workspace; a None workspace (the worker's) is every
    workspace.

    Known shortcoming: leaving the workspace out is allowed here, in
    get_evaluation and in change_status, because the worker and the recovery
    sweep act for every workspace; a resolver that forgot it would read
    across workspaces. The API's callers all pass it (tests/test_access.py
    tries every operation from another workspace)."""
    records = await pool.fetch(
        f"SELECT {_EVALUATION_COLUMNS} FROM evaluations WHERE id = any($1::bigint[])"
        " AND ($2::bigint IS NULL OR workspace_id = $2)",
        ids, workspace_id,
    )
    return [from_record(EvaluationRow, r) for r in records]


async def get_evaluation(pool: asyncpg.Pool, evaluation_id: int, *,
                         workspace_id: int | None = None) -> EvaluationRow | None:
    found = await evaluations_by_ids(pool, workspace_id, [evaluation_id])
    return found[0] if found else None


async def settle_part_size(pool: asyncpg.Pool, evaluation_id: int,
                           part_cases: int) -> int:
    """The evaluation's cases per part: `part_cases` if none was settled
    before, else the size its first lead settled (kept for every attempt)."""
    settled = await pool.fetchval(
        "UPDATE evaluations SET part_cases = coalesce(part_cases, $2)"
        " WHERE id = $1 RETURNING part_cases", evaluation_id, part_cases)
    return settled if settled is not None else part_cases


async def evaluation_status(pool: asyncpg.Pool, evaluation_id: int) -> str | None:
    return await pool.fetchval(
        "SELECT status FROM evaluations WHERE id = $1", evaluation_id)


async def unfinished_evaluations(
    pool: asyncpg.Pool, queue_prefix: str, older_than_s: float = 0.0
) -> list[tuple[int, int]]:
    """(id, attempt) of every evaluation of this queue still QUEUED or
    IN_PROGRESS that was created at least `older_than_s` ago. Evaluations
    stored before they named their queue count as everyone's."""
    records = await pool.fetch(
        "SELECT id, attempt FROM evaluations"
        " WHERE status IN ('QUEUED', 'IN_PROGRESS')"
        "   AND (queue_prefix = $2 OR queue_prefix IS NULL)"
        "   AND created_at < now() - make_interval(secs => $1) ORDER BY id",
        older_than_s, queue_prefix)
    return [(r["id"], r["attempt"]) for r in records]


async def next_attempt(pool: asyncpg.Pool, evaluation_id: int,
                       attempt: int) -> int | None:
    """Start a new attempt of an unfinished evaluation; None if it finished or
    its attempt is no longer `attempt` (someone else started one)."""
    return await pool.fetchval(
        "UPDATE evaluations SET attempt = attempt + 1"
        " WHERE id = $1 AND attempt = $2 AND status IN ('QUEUED', 'IN_PROGRESS')"
        " RETURNING attempt",
        evaluation_id, attempt)


async def list_evaluations(
    pool: asyncpg.Pool,
    workspace_id: int,
    limit: int,
    before_id: int | None,
    status: str | None = None,
    test_set_id: int | None = None,
) -> list[EvaluationRow]:
    """Newest first, filtered by status and test set when given."""
    records = await pool.fetch(
        f"SELECT {_EVALUATION_COLUMNS} FROM evaluations"
        " WHERE ($1::bigint IS NULL OR id < $1)"
        "   AND ($2::text IS NULL OR status = $2)"
        "   AND ($3::bigint IS NULL OR test_set_id = $3)"
        "   AND workspace_id = $5"
        " ORDER BY id DESC LIMIT $4",
        before_id, status, test_set_id, limit, workspace_id,
    )
    return [from_record(EvaluationRow, r) for r in records]


async def count_evaluations(
    pool: asyncpg.Pool, workspace_id: int, status: str | None = None,
    test_set_id: int | None = None,
) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM evaluations"
        " WHERE ($1::text IS NULL OR status = $1)"
        "   AND ($2::bigint IS NULL OR test_set_id = $2) AND workspace_id = $3",
        status, test_set_id, workspace_id,
    )


async def change_status(
    pool: asyncpg.Pool,
    evaluation_id: int,
    to_status: str,
    *,
    from_statuses: Sequence[str],
    error: str | None = None,
    attempt: int | None = None,
    workspace_id: int | None = None,
) -> tuple[EvaluationRow, ProgressEventRow] | None:
    """Move an evaluation on and record the event; None if it was not in
    one of `from_statuses` (someone else moved it first), when `attempt`
    is given, is no longer at that attempt (it was run again since), or
    when `workspace_id` is given, is not that workspace's."""
    async with pool.acquire() as conn, conn.transaction():
        record = await conn.fetchrow(
            "UPDATE evaluations SET status = $2, error = coalesce($3, error),"
            "   last_sequence = last_sequence + 1,"
            "   started_at = CASE WHEN $2 = 'IN_PROGRESS'"
            "                THEN coalesce(started_at, now()) ELSE started_at END,"
            "   completed_at = CASE WHEN $2 IN ('COMPLETED', 'FAILED', 'CANCELLED')"
            "                  THEN now() ELSE completed_at END"
            " WHERE id = $1 AND status = any($4::text[])"
            "   AND ($5::int IS NULL OR attempt = $5)"
            "   AND ($6::bigint IS NULL OR workspace_id = $6)"
            f" RETURNING {_EVALUATION_COLUMNS}",
            evaluation_id, to_status, error, list(from_statuses), attempt,
            workspace_id,
        )
        if record is None:
            return None
        evaluation = from_record(EvaluationRow, record)
        event = await _record_event(conn, evaluation, "STATUS_CHANGED")
    return evaluation, event


class NothingToRun(Exception):
    """An evaluation that cannot be run again, and why (its status)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def queue_again(
    pool: asyncpg.Pool, workspace_id: int, evaluation_id: int, queue_prefix: str,
    *, retry_failed: bool,
) -> tuple[EvaluationRow, ProgressEventRow] | None:
    """Put a finished evaluation back in the queue as a new attempt and record
    the event; None if the workspace has no such evaluation. With `retry_failed`, its
    failed results are deleted first, so the attempt runs those cases again
    (their RESULT_ADDED events stay, with no result); its scored results
    always stay. Raises NothingToRun if the attempt would have nothing to do
    or the evaluation is still queued or running."""
    async with pool.acquire() as conn, conn.transaction():
        record = await conn.fetchrow(
            f"SELECT {_EVALUATION_COLUMNS} FROM evaluations WHERE id = $1"
            " AND workspace_id = $2 FOR UPDATE", evaluation_id, workspace_id)
        if record is None:
            return None
        evaluation = from_record(EvaluationRow, record)
        if not evaluation.is_finished:
            raise NothingToRun(evaluation.status,
                               f"the evaluation is {evaluation.status}")
        to_retry = evaluation.failed_cases if retry_failed else 0
        if evaluation.status == "COMPLETED" and to_retry == 0:
            raise NothingToRun(evaluation.status, (
                "the evaluation is COMPLETED with a result for every case and"
                " none failed" if retry_failed else
                "the evaluation is COMPLETED; retryFailed: true runs its failed"
                " cases again"))
        if to_retry:
            await conn.execute(
                "DELETE FROM evaluation_results"
                " WHERE evaluation_id = $1 AND error IS NOT NULL", evaluation_id)
        record = await conn.fetchrow(
            "UPDATE evaluations SET status = 'QUEUED', attempt = attempt + 1,"
            "   error = NULL, completed_at = NULL,"
            "   completed_cases = completed_cases - $2,"
            "   failed_cases = failed_cases - $2,"
            "   last_sequence = last_sequence + 1, queue_prefix = $3"
            f" WHERE id = $1 RETURNING {_EVALUATION_COLUMNS}",
            evaluation_id, to_retry, queue_prefix,
        )
        evaluation = from_record(EvaluationRow, record)
        event = await _record_event(conn, evaluation, "STATUS_CHANGED")
    return evaluation, event


async def record_rate_limit(
    pool: asyncpg.Pool, evaluation_id: int, wait_seconds: float
) -> ProgressEventRow | None:
    """Record that a running evaluation holds off on a rate limit; None if it
    is no longer running."""
    async with pool.acquire() as conn, conn.transaction():
        record = await conn.fetchrow(
            "UPDATE evaluations SET last_sequence = last_sequence + 1"
            " WHERE id = $1 AND status = 'IN_PROGRESS'"
            f" RETURNING {_EVALUATION_COLUMNS}",
            evaluation_id)
        if record is None:
            return None
        return await _record_event(conn, from_record(EvaluationRow, record),
                                   "RATE_LIMITED", wait_seconds=wait_seconds)


async def store_results(
    pool: asyncpg.Pool, evaluation_id: int, results: Sequence[NewResult]
) -> tuple[str, list[ProgressEventRow]]:
    """Store a batch of results with one RESULT_ADDED event each.

    Returns the evaluation's status and the events recorded. Nothing is stored
    unless the evaluation is IN_PROGRESS (a cancelled run's late answers are
    dropped), and a result for a case that already has one is skipped, so a
    case run twice after a crash is never counted twice.
    """
    async with pool.acquire() as conn, conn.transaction():
        record = await conn.fetchrow(
            f"SELECT {_EVALUATION_COLUMNS} FROM evaluations WHERE id = $1 FOR UPDATE",
            evaluation_id,
        )
        if record is None:
            return "DELETED", []
        evaluation = from_record(EvaluationRow, record)
        if evaluation.status != "IN_PROGRESS":
            return evaluation.status, []

        stored = await _insert_results(conn, evaluation_id, results)
        events = _result_events(evaluation, stored)
        if not events:
            return evaluation.status, []

        last = events[-1]
        scored = [r for r in stored if r.error is None]
        await conn.execute(
            "UPDATE evaluations SET completed_cases = $2, failed_cases = $3,"
            "   scored_cases = scored_cases + $4, passed_cases = passed_cases + $5,"
            "   score_sum = score_sum + $6, last_sequence = $7"
            " WHERE id = $1",
            evaluation_id, last.completed_cases, last.failed_cases, len(scored),
            sum(1 for r in scored if r.passed), sum(r.score for r in scored),
            last.sequence,
        )
        await _insert_events(conn, events)
    return evaluation.status, events


async def _insert_results(
    conn: asyncpg.Connection, evaluation_id: int, results: Sequence[NewResult]
) -> list[ResultRow]:
    columns = [f.name for f in dataclasses.fields(NewResult)]
    records = await conn.fetch(
        "INSERT INTO evaluation_results AS r (evaluation_id, test_case_id, position,"
        "   output, score, passed, error, latency_ms, prompt_tokens,"
        "   completion_tokens)"
        " SELECT $1, * FROM unnest($2::bigint[], $3::int[], $4::text[],"
        "   $5::float8[], $6::bool[], $7::text[], $8::int[], $9::int[], $10::int[])"
        " ON CONFLICT (evaluation_id, test_case_id) DO NOTHING"
        f" RETURNING {_RESULT_COLUMNS}",
        evaluation_id,
        *([getattr(result, column) for result in results] for column in columns),
    )
    # RETURNING gives no order guarantee; events follow the order of ids.
    return sorted((from_record(ResultRow, r) for r in records), key=lambda r: r.id)


def _result_events(
    evaluation: EvaluationRow, stored: Sequence[ResultRow]
) -> list[ProgressEventRow]:
    completed, failed = evaluation.completed_cases, evaluation.failed_cases
    scored, score_sum = evaluation.scored_cases, evaluation.score_sum
    sequence = evaluation.last_sequence
    events = []
    for result in stored:
        completed += 1
        sequence += 1
        if result.error is None:
            scored += 1
            score_sum += result.score
        else:
            failed += 1
        events.append(_event(evaluation, "RESULT_ADDED", sequence, completed, failed,
                             score_sum / scored if scored else None, result))
    return events


def _event(
    evaluation: EvaluationRow,
    kind: str,
    sequence: int,
    completed_cases: int,
    failed_cases: int,
    score: float | None,
    result: ResultRow | None,
) -> ProgressEventRow:
    return ProgressEventRow(
        evaluation_id=evaluation.id, sequence=sequence, kind=kind,
        status=evaluation.status, total_cases=evaluation.total_cases,
        completed_cases=completed_cases, failed_cases=failed_cases, score=score,
        result=result,
    )


async def _record_event(conn: asyncpg.Connection, evaluation: EvaluationRow,
                        kind: str, *, wait_seconds: float | None = None,
                        ) -> ProgressEventRow:
    """Record the event an update of the evaluation row (which advanced its
    last_sequence, in this transaction) stands for, with its counters."""
    event = dataclasses.replace(
        _event(evaluation, kind, evaluation.last_sequence,
               evaluation.completed_cases, evaluation.failed_cases,
               evaluation.score, None),
        wait_seconds=wait_seconds)
    await _insert_events(conn, [event])
    return event


async def _insert_events(
    conn: asyncpg.Connection, events: Sequence[ProgressEventRow]
) -> None:
    await conn.execute(
        "INSERT INTO progress_events (evaluation_id, sequence, kind, status,"
        "   completed_cases, failed_cases, score, result_id, wait_seconds)"
        " SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[],"
        "   $5::int[], $6::int[], $7::float8[], $8::bigint[], $9::float8[])",
        [e.evaluation_id for e in events], [e.sequence for e in events],
        [e.kind for e in events], [e.status for e in events],
        [e.completed_cases for e in events], [e.failed_cases for e in events],
        [e.score for e in events],
        [e.result.id if e.result else None for e in events],
        [e.wait_seconds for e in events],
    )


async def events_after(
    pool: asyncpg.Pool, evaluation_id: int, after_sequence: int, limit: int
) -> list[ProgressEventRow]:
    """Recorded events with a sequence above `after_sequence`, in order."""
    records = await pool.fetch(
        "SELECT e.evaluation_id, e.sequence, e.kind, e.status, ev.total_cases,"
        "   e.completed_cases, e.failed_cases, e.score, e.wait_seconds,"
        f"  {_PREFIXED_RESULT_COLUMNS}"
        " FROM progress_events e"
        " JOIN evaluations ev ON ev.id = e.evaluation_id"
        " LEFT JOIN evaluation_results r ON r.id = e.result_id"
        " WHERE e.evaluation_id = $1 AND e.sequence > $2"
        " ORDER BY e.sequence LIMIT $3",
        evaluation_id, after_sequence, limit,
    )
    events = []
    for r in records:
        result = (from_record(ResultRow, r, prefix="r_")
                  if r["r_id"] is not None else None)
        events.append(ProgressEventRow(
            evaluation_id=r["evaluation_id"], sequence=r["sequence"],
            kind=r["kind"], status=r["status"], total_cases=r["total_cases"],
            completed_cases=r["completed_cases"], failed_cases=r["failed_cases"],
            score=r["score"], result=result, wait_seconds=r["wait_seconds"],
        ))
    return events


async def cases_without_result(
    pool: asyncpg.Pool, evaluation: EvaluationRow, after_position: int, limit: int
) -> list[TestCaseRow]:
    """The next cases of the run, in order, that have no result yet (of its
    own workspace, whatever becomes of the rows)."""
    records = await pool.fetch(
        f"SELECT {columns(TestCaseRow, 'tc')}"
        " FROM test_cases tc JOIN test_sets ts ON ts.id = tc.test_set_id"
        " WHERE tc.test_set_id = $1 AND tc.position > $2 AND ts.workspace_id = $5"
        "   AND NOT EXISTS (SELECT 1 FROM evaluation_results r"
        "                   WHERE r.evaluation_id = $3 AND r.test_case_id = tc.id)"
        " ORDER BY tc.position LIMIT $4",
        evaluation.test_set_id, after_position, evaluation.id, limit,
        evaluation.workspace_id,
    )
    return [from_record(TestCaseRow, r) for r in records]


async def part_has_cases_without_result(
    pool: asyncpg.Pool, evaluation: EvaluationRow, first: int, last: int
) -> bool:
    """Whether any case from position `first` to `last` has no result yet."""
    return await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM test_cases tc"
        " WHERE tc.test_set_id = $1 AND tc.position BETWEEN $2 AND $3"
        "   AND NOT EXISTS (SELECT 1 FROM evaluation_results r"
        "                   WHERE r.evaluation_id = $4 AND r.test_case_id = tc.id))",
        evaluation.test_set_id, first, last, evaluation.id)


async def page_results(
    pool: asyncpg.Pool,
    workspace_id: int,
    evaluation_ids: Sequence[int],
    limit: int,
    after_position: int | None,
    passed: bool | None = None,
    category_id: int | None = None,
) -> dict[int, list[ResultRow]]:
    """A page of results, in test-case order, for each of several evaluations
    in one statement (each page walks the position index on its own)."""
    records = await pool.fetch(
        f"SELECT {_PREFIXED_RESULT_COLUMNS}"
        f" FROM {_own_evaluations('$6')} AS ev CROSS JOIN LATERAL ("
        "   SELECT r.* FROM evaluation_results r"
        "   WHERE r.evaluation_id = ev.id AND r.position > coalesce($2::int, -1)"
        "     AND ($3::bool IS NULL OR r.passed = $3)"
        "     AND ($4::bigint IS NULL OR EXISTS (SELECT 1 FROM test_cases tc"
        "          WHERE tc.id = r.test_case_id AND tc.category_id = $4))"
        "   ORDER BY r.position LIMIT $5) r",
        list(evaluation_ids), after_position, passed, category_id, limit,
        workspace_id,
    )
    pages: dict[int, list[ResultRow]] = {i: [] for i in evaluation_ids}
    for r in records:
        row = from_record(ResultRow, r, prefix="r_")
        pages[row.evaluation_id].append(row)
    return pages


async def count_results(
    pool: asyncpg.Pool,
    workspace_id: int,
    evaluation_ids: Sequence[int],
    passed: bool | None = None,
    category_id: int | None = None,
) -> dict[int, int]:
    records = await pool.fetch(
        "SELECT r.evaluation_id, count(*) AS n FROM evaluation_results r"
        f" WHERE r.evaluation_id IN {_own_evaluations('$4')}"
        "   AND ($2::bool IS NULL OR r.passed = $2)"
        "   AND ($3::bigint IS NULL OR EXISTS (SELECT 1 FROM test_cases tc"
        "        WHERE tc.id = r.test_case_id AND tc.category_id = $3))"
        " GROUP BY r.evaluation_id",
        list(evaluation_ids), passed, category_id, workspace_id,
    )
    return {r["evaluation_id"]: r["n"] for r in records}


async def page_evaluations_of_test_sets(
    pool: asyncpg.Pool, workspace_id: int, test_set_ids: Sequence[int],
    limit: int, before_id: int | None,
) -> dict[int, list[EvaluationRow]]:
    """Newest-first pages of each test set's evaluations, in one statement."""
    records = await pool.fetch(
        f"SELECT {columns(EvaluationRow, 'e')}"
        " FROM unnest($1::bigint[]) AS ts(id) CROSS JOIN LATERAL ("
        "   SELECT * FROM evaluations WHERE test_set_id = ts.id"
        "     AND workspace_id = $4"
        "     AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3) e",
        list(test_set_ids), before_id, limit, workspace_id,
    )
    pages: dict[int, list[EvaluationRow]] = {i: [] for i in test_set_ids}
    for record in records:
        row = from_record(EvaluationRow, record)
        pages[row.test_set_id].append(row)
    return pages


async def count_evaluations_of_test_sets(
    pool: asyncpg.Pool, workspace_id: int, test_set_ids: Sequence[int]
) -> dict[int, int]:
    records = await pool.fetch(
        "SELECT test_set_id, count(*) AS n FROM evaluations"
        " WHERE test_set_id = any($1::bigint[]) AND workspace_id = $2"
        " GROUP BY test_set_id",
        list(test_set_ids), workspace_id,
    )
    return {r["test_set_id"]: r["n"] for r in records}


async def category_scores(
    pool: asyncpg.Pool, workspace_id: int, evaluation_ids: Sequence[int]
) -> list[CategoryScoreRow]:
    """Per-category score and pass rate over scored results; every category
    of the test set is listed, with nulls while it has no scored result."""
    records = await pool.fetch(
        "SELECT ev.id AS evaluation_id, c.id AS category_id,"
        "   avg(r.score) FILTER (WHERE r.error IS NULL) AS score,"
        "   avg(r.passed::int) FILTER (WHERE r.error IS NULL) AS pass_rate,"
        "   count(r.id) AS completed_cases"
        " FROM evaluations ev"
        " JOIN categories c ON c.test_set_id = ev.test_set_id"
        " LEFT JOIN test_cases tc ON tc.category_id = c.id"
        " LEFT JOIN evaluation_results r"
        "   ON r.test_case_id = tc.id AND r.evaluation_id = ev.id"
        " WHERE ev.id = any($1::bigint[]) AND ev.workspace_id = $2"
        " GROUP BY ev.id, c.id, c.name ORDER BY ev.id, c.name",
        evaluation_ids, workspace_id,
    )
    return [
        CategoryScoreRow(
            evaluation_id=r["evaluation_id"], category_id=r["category_id"],
            score=None if r["score"] is None else float(r["score"]),
            pass_rate=None if r["pass_rate"] is None else float(r["pass_rate"]),
            completed_cases=r["completed_cases"],
        )
        for r in records
    ]
