"""Following one evaluation's progress: every event once, in order, no gaps.

The order of steps is what makes this exact. The listener is registered
before the stored state is read, so nothing published after the read can slip
past; events already seen are skipped; a gap (a message lost, reordered or
dropped for a slow follower) is filled from the store, which holds every
event before it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import asyncpg

from app.errors import BadUserInput, NotFound
from app.events import Listener, ProgressHub
from app.store import evaluations as evaluation_store
from app.store.rows import EvaluationRow, ProgressEventRow

# With no message for this long a follower checks the store itself; this bounds
# the delay when Redis drops a message or restarts. Each quiet check doubles
# the wait, up to the maximum, so a thousand followers of a queued or stalled
# evaluation do not each query PostgreSQL every second.
IDLE_CHECK_S = 1.0
MAX_IDLE_CHECK_S = 8.0
_REPLAY_PAGE = 500


@dataclasses.dataclass(frozen=True)
class Snapshot:
    evaluation: EvaluationRow


async def follow(
    pool: asyncpg.Pool,
    hub: ProgressHub,
    workspace_id: int,
    evaluation_id: int,
    after_sequence: int | None,
) -> AsyncIterator[Snapshot | ProgressEventRow]:
    """A Snapshot first (unless `after_sequence` is given), then each event,
    ending after the one that finishes the evaluation. An evaluation of
    another workspace is one that does not exist."""
    if after_sequence is not None and after_sequence < 0:
        raise BadUserInput("afterSequence: must be 0 or more")

    with hub.listen(evaluation_id) as listener:
        evaluation = await evaluation_store.get_evaluation(
            pool, evaluation_id, workspace_id=workspace_id)
        if evaluation is None:
            raise NotFound("evaluationId: no evaluation with this id")
        if after_sequence is not None and after_sequence > evaluation.last_sequence:
            raise BadUserInput(
                f"afterSequence: {after_sequence} is beyond the last event of this"
                f" evaluation ({evaluation.last_sequence})"
            )

        if after_sequence is None:
            yield Snapshot(evaluation)
            last_seen = evaluation.last_sequence
        else:
            last_seen = after_sequence
        if evaluation.is_finished and last_seen >= evaluation.last_sequence:
            return

        events = _events_in_order(pool, listener, last_seen)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event
                if event.is_terminal and await _is_latest(pool, event):
                    return


async def _is_latest(pool: asyncpg.Pool, event: ProgressEventRow) -> bool:
    """Whether nothing came after this event: an evaluation that was run
    again has a finishing event in the middle of its history."""
    evaluation = await evaluation_store.get_evaluation(pool, event.evaluation_id)
    return evaluation is None or evaluation.last_sequence <= event.sequence


async def _events_in_order(
    pool: asyncpg.Pool, listener: Listener, last_seen: int
) -> AsyncIterator[ProgressEventRow]:
    evaluation_id = listener.evaluation_id
    # Catch up from the store first: a late or reconnecting follower.
    async for event in _stored_after(pool, evaluation_id, last_seen):
        yield event
        last_seen = event.sequence

    idle_check_s = IDLE_CHECK_S
    while True:
        event = await _next_published(listener, idle_check_s)
        if event is not None:
            idle_check_s = IDLE_CHECK_S

        if event is None or listener.missed or event.sequence > last_seen + 1:
            listener.missed = False
            found = False
            async for stored in _stored_after(pool, evaluation_id, last_seen):
                yield stored
                last_seen = stored.sequence
                found = True
            if event is None and not found:
                idle_check_s = min(idle_check_s * 2, MAX_IDLE_CHECK_S)
        if event is not None and event.sequence == last_seen + 1:
            yield event
            last_seen = event.sequence


async def _next_published(listener: Listener,
                          timeout_s: float) -> ProgressEventRow | None:
    """The next event the hub passed on; None after `timeout_s` with none."""
    # Most events arrive while earlier ones are still being sent: taking
    # them straight off the queue spares a timer and a task for each.
    if not listener.queue.empty():
        return listener.queue.get_nowait()
    try:
        return await asyncio.wait_for(listener.queue.get(), timeout_s)
    except TimeoutError:
        return None


async def _stored_after(
    pool: asyncpg.Pool, evaluation_id: int, after_sequence: int
) -> AsyncIterator[ProgressEventRow]:
    while True:
        page = await evaluation_store.events_after(
            pool, evaluation_id, after_sequence, _REPLAY_PAGE)
        for event in page:
            yield event
        if len(page) < _REPLAY_PAGE:
            return
        after_sequence = page[-1].sequence
