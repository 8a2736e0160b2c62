"""GraphQL types of an evaluation's live progress."""

from __future__ import annotations

import enum

import strawberry

from app import ids
from app.progress import Snapshot
from app.schema.evaluations import EvaluationResult, EvaluationStatus
from app.store.rows import ProgressEventRow


@strawberry.enum(description="What a progress event reports.")
class ProgressEventKind(enum.Enum):
    SNAPSHOT = strawberry.enum_value(
        "SNAPSHOT",
        description="The first event of every subscription: the state as it stands.")
    STATUS_CHANGED = strawberry.enum_value(
        "STATUS_CHANGED", description="The evaluation moved to another status.")
    RESULT_ADDED = strawberry.enum_value(
        "RESULT_ADDED", description="A result was stored; it is in `result`.")
    RATE_LIMITED = strawberry.enum_value(
        "RATE_LIMITED", description=(
            "The model endpoint is rate limiting the run: it holds off for"
            " `waitSeconds` and calls fewer at a time, then goes on. The cases"
            " held up are retried, not failed."))


@strawberry.type(description=(
    "One step of an evaluation's progress. Every event carries the counters as"
    " they stand after it, so a client that keeps only the last event is up to"
    " date. sequence grows by one per event other than SNAPSHOT of"
    " that evaluation, starting at 1; a SNAPSHOT carries the sequence of the"
    " last event it includes (0 if none)."))
class EvaluationProgressEvent:
    sequence: int = strawberry.field(description="Position in the evaluation's events.")
    kind: ProgressEventKind = strawberry.field(description="What this event reports.")
    evaluation_id: strawberry.ID = strawberry.field(
        description="The evaluation it belongs to.")
    status: EvaluationStatus = strawberry.field(description="Status after the event.")
    total_cases: int = strawberry.field(description="Cases the evaluation runs.")
    completed_cases: int = strawberry.field(
        description="Cases with a result after the event, scored or failed.")
    failed_cases: int = strawberry.field(
        description="Cases whose result holds an error, after the event.")
    score: float | None = strawberry.field(
        description="Mean score over scored results after the event.")
    result: EvaluationResult | None = strawberry.field(
        description="Set on RESULT_ADDED: the result stored; null in a replay"
        " if rerunEvaluation has since replaced that failed result.")
    wait_seconds: float | None = strawberry.field(
        default=None,
        description="Set on RATE_LIMITED: how long the run holds off before"
        " calling the model again.")

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> EvaluationProgressEvent:
        evaluation = snapshot.evaluation
        return cls(
            sequence=evaluation.last_sequence, kind=ProgressEventKind.SNAPSHOT,
            evaluation_id=strawberry.ID(ids.encode(ids.Kind.EVALUATION,
                                                   evaluation.id)),
            status=EvaluationStatus(evaluation.status),
            total_cases=evaluation.total_cases,
            completed_cases=evaluation.completed_cases,
            failed_cases=evaluation.failed_cases, score=evaluation.score,
            result=None,
        )

    @classmethod
    def from_row(cls, event: ProgressEventRow) -> EvaluationProgressEvent:
        return cls(
            sequence=event.sequence, kind=ProgressEventKind(event.kind),
            evaluation_id=strawberry.ID(ids.encode(ids.Kind.EVALUATION,
                                                   event.evaluation_id)),
            status=EvaluationStatus(event.status), total_cases=event.total_cases,
            completed_cases=event.completed_cases,
            failed_cases=event.failed_cases, score=event.score,
            result=EvaluationResult.from_row(event.result) if event.result else None,
            wait_seconds=event.wait_seconds,
        )
