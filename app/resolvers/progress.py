"""The evaluationProgress subscription."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
from strawberry.types import Info

from app import ids, progress
from app.context import Context
from app.schema.progress import EvaluationProgressEvent
from app.store.rows import ProgressEventRow


@strawberry.type
class ProgressSubscriptions:
    @strawberry.subscription(description=(
        "Streams an evaluation's progress: a SNAPSHOT first, then every status"
        " change and result, and ends after the event that reaches COMPLETED,"
        " FAILED or CANCELLED (at once, after the SNAPSHOT, if it already has)."
        " A SNAPSHOT carries the sequence of the last event it includes. With"
        " afterSequence, the stream replays the events after that one instead of"
        " a SNAPSHOT, with no gap and no repeat: a client that reconnects passes"
        " the last sequence it saw. Rate-limit pauses come as RATE_LIMITED"
        " events. An evaluation run again with rerunEvaluation has a finishing"
        " event mid-history; the stream ends only at the latest one."))
    async def evaluation_progress(
        self,
        info: Info[Context, None],
        evaluation_id: Annotated[strawberry.ID, strawberry.argument(
            description="The evaluation to follow.")],
        after_sequence: Annotated[int | None, strawberry.argument(
            description="The last sequence this client saw; replay from there.")
        ] = None,
    ) -> AsyncGenerator[EvaluationProgressEvent, None]:
        row_id = ids.decode(ids.Kind.EVALUATION, evaluation_id, field="evaluationId")
        context = info.context

        steps = progress.follow(context.pool, context.services.hub,
                                context.workspace_id, row_id, after_sequence)
        # Closed explicitly so a client that leaves releases its listener now.
        async with contextlib.aclosing(steps):
            async for step in steps:
                if isinstance(step, progress.Snapshot):
                    yield EvaluationProgressEvent.from_snapshot(step)
                else:
                    yield _converted.event(step)


class _ConvertedEvents:
    """The GraphQL form of recent progress events, made once for all the
    subscribers of an evaluation instead of once for each.

    The API process receives each published event once and hands the same
    row to every subscriber, so a conversion is kept with the row it was made
    from and reused only for that very row. A row read again from the store
    (a replay, after a rerun may have deleted its result) is converted anew.
    """

    def __init__(self, max_events: int = 4096) -> None:
        self.max_events = max_events
        # (evaluation, sequence) -> the row and its conversion; oldest first.
        self._events: collections.OrderedDict[
            tuple[int, int], tuple[ProgressEventRow, EvaluationProgressEvent]
        ] = collections.OrderedDict()

    def event(self, row: ProgressEventRow) -> EvaluationProgressEvent:
        key = (row.evaluation_id, row.sequence)
        kept = self._events.get(key)
        if kept is not None and kept[0] is row:
            return kept[1]
        converted = EvaluationProgressEvent.from_row(row)
        self._events[key] = (row, converted)
        if len(self._events) > self.max_events:
            self._events.popitem(last=False)
        return converted


# Process-wide on purpose: an entry is found only by the row object itself.
_converted = _ConvertedEvents()
