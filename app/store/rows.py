"""What the store hands back: plain rows, free of GraphQL and of asyncpg."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@dataclasses.dataclass(frozen=True)
class TestSetRow:
    id: int
    workspace_id: int
    name: str
    description: str | None
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class CategoryRow:
    id: int
    test_set_id: int
    name: str
    description: str | None


@dataclasses.dataclass(frozen=True)
class TestCaseRow:
    id: int
    test_set_id: int
    category_id: int | None
    position: int
    input: dict[str, Any]
    expected_output: str | None
    metadata: Any


@dataclasses.dataclass(frozen=True)
class NewTestCase:
    input: dict[str, Any]
    expected_output: str | None = None
    category: str | None = None
    metadata: Any = None


@dataclasses.dataclass(frozen=True)
class EvaluationRow:
    id: int
    workspace_id: int
    test_set_id: int
    name: str | None
    status: str
    model: str
    prompt_template: str
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    scorer_type: str
    scorer_options: dict[str, Any]
    concurrency: int
    total_cases: int
    completed_cases: int
    failed_cases: int
    scored_cases: int
    passed_cases: int
    score_sum: float
    last_sequence: int
    attempt: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    # Cases per part, once a lead has cut it (None before its first run).
    part_cases: int | None = None

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def score(self) -> float | None:
        return self.score_sum / self.scored_cases if self.scored_cases else None

    @property
    def pass_rate(self) -> float | None:
        return self.passed_cases / self.scored_cases if self.scored_cases else None


@dataclasses.dataclass(frozen=True)
class NewResult:
    """A scored or failed model answer for one test case, not yet stored."""

    test_case_id: int
    position: int
    output: str | None
    score: float | None
    passed: bool | None
    error: str | None
    latency_ms: int | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclasses.dataclass(frozen=True)
class ResultRow:
    id: int
    evaluation_id: int
    test_case_id: int
    position: int
    output: str | None
    score: float | None
    passed: bool | None
    error: str | None
    latency_ms: int | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclasses.dataclass(frozen=True)
class CategoryScoreRow:
    evaluation_id: int
    category_id: int
    score: float | None
    pass_rate: float | None
    completed_cases: int


@dataclasses.dataclass(frozen=True)
class ProgressEventRow:
    """A STATUS_CHANGED, RESULT_ADDED or RATE_LIMITED event, with counters as
    they stood."""

    evaluation_id: int
    sequence: int
    kind: str
    status: str
    total_cases: int
    completed_cases: int
    failed_cases: int
    score: float | None
    result: ResultRow | None
    wait_seconds: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.kind == "STATUS_CHANGED" and self.status in TERMINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProgressEventRow:
        result = data.get("result")
        return cls(**{**data, "result": ResultRow(**result) if result else None})


def columns(row_type: type, table: str = "", prefix: str = "") -> str:
    """The SELECT list for a row dataclass: `t.id AS r_id, ...` with a table
    alias and a prefix where a join would make names clash."""
    qualifier = f"{table}." if table else ""
    return ", ".join(
        f"{qualifier}{f.name}" + (f" AS {prefix}{f.name}" if prefix else "")
        for f in dataclasses.fields(row_type))


def from_record(row_type: type, record: Any, prefix: str = "") -> Any:
    """Build a row dataclass from an asyncpg record with matching columns
    (named with `prefix`, as `columns` gave them)."""
    return row_type(**{f.name: record[prefix + f.name]
                       for f in dataclasses.fields(row_type)})
