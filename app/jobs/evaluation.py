"""The evaluation job: every test case through the model, scored and stored.

One run is four kinds of task joined by bounded queues, so the worker holds
only a small window of cases however large the test set is:

  feeder --cases--> `concurrency` callers --results--> one writer
                                      watcher (stops the run when cancelled)

The single writer stores results in batches (whatever has piled up while the
previous batch was written, so the first result is never held back) and
publishes their events only after the transaction has committed. Callers
share a Throttle: a rate-limited call holds the whole run off and is retried,
instead of failing case after case.

Stopping (a cancel, a fatal model error, a lost run lock) abandons the calls
in flight: after a cancel their answers would be dropped anyway, and a slow
model must not keep a cancelled run busy. A worker that is shutting down
drains instead: no new call starts, the calls in flight finish and are
stored, and the rest of the run is queued as a new attempt.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg
import redis.asyncio as aioredis
from arq import Retry
from arq.connections import ArqRedis

from app import events
from app.jobs import queue
from app.jobs.endpoint_limit import EndpointLimit
from app.jobs.throttle import Throttle, sleep_unless_stopping
from app.llm.client import CallOptions, ModelAnswer, ModelClient, ModelError
from app.scoring import Scorer, ScorerOptionsError, ScoringError, build_scorer
from app.store import db, run_locks
from app.store import evaluations as evaluation_store
from app.store.rows import EvaluationRow, NewResult, TestCaseRow
from app.templates import PromptTemplate, TemplateError, compile_template

log = logging.getLogger(__name__)

T = TypeVar("T")

FEED_PAGE_SIZE = 200
# Failures that say the endpoint itself is down rather than that one question
# went wrong. This many in a row (or twice the concurrency, if more) with no
# answer between them fail the run instead of every case after them; a re-run
# then picks up the failed cases once the endpoint is back.
_ENDPOINT_DOWN_KINDS = frozenset({"connection_error", "timeout", "upstream_error"})
_MIN_FAILURES_IN_A_ROW = 10
WRITE_BATCH_MAX = 500
WATCH_INTERVAL_S = 1.0
# How long rendering one case's prompt may take: far beyond any usual
# template, and short enough that one that loops for ever only slows the
# worker's other runs (the render holds its event loop) instead of stopping
# them.
RENDER_TIME_LIMIT_S = 1.0
# How soon a helper job its worker cannot use goes back for another worker,
# the first time and at the most.
HELPER_RETRY_S = 0.2
HELPER_RETRY_MAX_S = 30.0
HELPER_MAX_TRIES = 10
# Before running a part another runner held and left unfinished, long enough
# for that runner to notice it lost its lock connection and stop calling.
TAKEOVER_GRACE_S = 7.0
# A part is cut smaller than ASSAY_PART_CASES when the evaluation is too small
# to give every worker that may share it this many parts: runners finish
# within about one part of each other, so fewer, larger parts leave some
# idle while the last ones run. Never below the floor, where the queries per
# part would start to count.
PARTS_PER_RUNNER = 8
MIN_PART_CASES = 25


@dataclasses.dataclass
class JobContext:
    """What every evaluation run of one worker process shares."""

    pool: asyncpg.Pool
    redis: aioredis.Redis
    redis_prefix: str
    model_client: ModelClient
    database_url: str
    rate_limit_max_wait_s: float = 600.0
    # Where a drained run's next attempt is queued (the worker's arq pool).
    arq: ArqRedis | None = None
    # Set when the worker is shutting down: runs drain and hand themselves back.
    draining: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # Requests a minute and calls in flight allowed on the model endpoint,
    # across all workers (None: no limit).
    model_rpm: int | None = None
    model_max_calls: int | None = None
    # An evaluation's parts, and how many workers may run it at once.
    part_cases: int = 200
    workers_per_evaluation: int = 4
    # The evaluations this process is running (as lead or helper): a helper
    # job for one of them is better taken by another worker.
    # (A count: an old attempt's helper may still run beside a new lead.)
    running: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter)

    def part_size(self, total_cases: int) -> int:
        """Cases per part of an evaluation of `total_cases`, as this worker
        would cut it leading its first run (then kept with the evaluation)."""
        if self.workers_per_evaluation == 1:
            return self.part_cases  # no one to share with
        runners_parts = self.workers_per_evaluation * PARTS_PER_RUNNER
        return min(self.part_cases,
                   max(MIN_PART_CASES, math.ceil(total_cases / runners_parts)))

    def endpoint_limit(self, model: str) -> EndpointLimit:
        """The shared limits of the endpoint a run of `model` calls."""
        return EndpointLimit(self.redis, self.redis_prefix,
                             self.model_client.base_url, model,
                             requests_per_minute=self.model_rpm,
                             max_calls=self.model_max_calls,
                             lease_s=self.model_client.deadline_s)


async def run_evaluation(job: JobContext, evaluation_id: int, attempt: int) -> str:
    """Run an evaluation to its end; returns the status it ended in.

    Only one worker at a time runs an evaluation: a job for one that another
    worker is running (queued twice after a Redis restart, say) ends at once
    instead of calling the model for the same cases again.
    """
    # The recovery sweep holds the lock for a moment while it looks; waiting
    # a little keeps a job that starts just then from giving up.
    async with run_locks.run_lock(job.database_url, evaluation_id,
                                  wait_s=2.0) as lock:
        if not lock.held:
            log.info("evaluation %s is being run by another worker", evaluation_id)
            return "RUNNING_ELSEWHERE"
        return await _run_while_locked(job, evaluation_id, attempt, lock)


async def _run_while_locked(job: JobContext, evaluation_id: int, attempt: int,
                            lock: run_locks.RunLock) -> str:
    evaluation = await evaluation_store.get_evaluation(job.pool, evaluation_id)
    if evaluation is None:
        log.warning("evaluation %s no longer exists; nothing to run", evaluation_id)
        return "DELETED"
    if evaluation.attempt != attempt or evaluation.is_finished:
        log.info("evaluation %s attempt %s is %s; not running it again",
                 evaluation_id, attempt, evaluation.status)
        return evaluation.status

    resumed = evaluation.status == "IN_PROGRESS"
    if not resumed and not await _change_status(job, evaluation, "IN_PROGRESS",
                                                from_statuses=("QUEUED",)):
        return "CANCELLED"
    part_cases = await evaluation_store.settle_part_size(
        job.pool, evaluation.id, job.part_size(evaluation.total_cases))
    await _ask_for_helpers(job, evaluation, part_cases)
    log.info("evaluation %s (workspace %s) attempt %s %s: %d cases, %d done,"
             " model %s, concurrency %d", evaluation_id, evaluation.workspace_id,
             attempt, "resumed" if resumed else "started",
             evaluation.total_cases, evaluation.completed_cases, evaluation.model,
             evaluation.concurrency)

    try:
        template = compile_template(evaluation.prompt_template)
        scorer = build_scorer(evaluation.scorer_type, evaluation.scorer_options)
    except (TemplateError, ScorerOptionsError) as exc:
        await _finish(job, evaluation, "FAILED", f"the evaluation is invalid: {exc}")
        return "FAILED"

    started = time.monotonic()
    run = _Run(job, evaluation, template, scorer, lock, part_cases, lead=True)
    job.running[evaluation_id] += 1
    try:
        await run.execute()
    except Exception as exc:
        outcome = await _after_crash(job, evaluation, exc)
    else:
        outcome = await _after_run(job, evaluation, run)
    finally:
        job.running[evaluation_id] -= 1
    log.info("evaluation %s attempt %s ended %s after %.1fs", evaluation_id, attempt,
             outcome, time.monotonic() - started)
    return outcome


async def run_evaluation_part(job: JobContext, evaluation_id: int,
                              attempt: int, tries: int = 1) -> str:
    """Help an attempt's lead: run whichever parts of the evaluation no other
    worker holds, then end. Only the lead finishes the evaluation; a helper
    records only a fatal error. Parts are cut as the evaluation's first lead
    settled, before it queued any helper."""
    evaluation = await evaluation_store.get_evaluation(job.pool, evaluation_id)
    if (evaluation is None or evaluation.attempt != attempt
            or evaluation.status != "IN_PROGRESS"):
        return "NOT_NEEDED"
    if job.running[evaluation_id] > 0:
        # This worker runs it already; the job goes back to the queue for a
        # worker that does not (one that polls first takes it), less often
        # each time, since on a worker alone it comes back here every time;
        # after a few tries nobody else is free, and it is let go.
        if tries >= HELPER_MAX_TRIES:
            return "NOT_NEEDED"
        log.debug("evaluation %s: helper job sent back for another worker",
                  evaluation_id)
        raise Retry(defer=min(HELPER_RETRY_S * 2 ** (tries - 1),
                              HELPER_RETRY_MAX_S))
    try:
        template = compile_template(evaluation.prompt_template)
        scorer = build_scorer(evaluation.scorer_type, evaluation.scorer_options)
    except (TemplateError, ScorerOptionsError):
        return "NOT_NEEDED"  # the lead fails the evaluation for this
    job.running[evaluation_id] += 1
    try:
        async with run_locks.part_locks(job.database_url, evaluation_id) as lock:
            run = _Run(job, evaluation, template, scorer, lock,
                       evaluation.part_cases
                       or job.part_size(evaluation.total_cases), lead=False)
            await run.execute()
    except Exception as exc:
        if _lost_database(exc):
            log.warning("evaluation %s: a helper lost PostgreSQL (%s)",
                        evaluation_id, exc)
            return "INTERRUPTED"
        raise
    finally:
        job.running[evaluation_id] -= 1
    if run.fatal_error is not None:
        await _finish(job, evaluation, "FAILED", run.fatal_error)
        return "FAILED"
    log.info("evaluation %s attempt %s: a helper ran %d part(s)", evaluation_id,
             attempt, run.parts_run)
    return run.stopped_by or "HELPED"


async def _ask_for_helpers(job: JobContext, evaluation: EvaluationRow,
                           part_cases: int) -> None:
    """Queue jobs for other workers to run parts of a large evaluation."""
    parts_left = math.ceil((evaluation.total_cases - evaluation.completed_cases)
                           / part_cases)
    helpers = min(job.workers_per_evaluation, parts_left) - 1
    if helpers < 1 or job.arq is None:
        return
    await queue.enqueue_helpers(job.arq, job.redis_prefix, evaluation.id,
                                evaluation.attempt, helpers)
    log.info("evaluation %s attempt %s: %d helper job(s) queued for %d parts",
             evaluation.id, evaluation.attempt, helpers, parts_left)


async def _after_crash(job: JobContext, evaluation: EvaluationRow,
                       exc: Exception) -> str:
    if _lost_database(exc):
        # The run's state is safe in PostgreSQL; with the database gone there
        # is nothing to record. Leaving it IN_PROGRESS lets the recovery sweep
        # resume it once the database is back.
        log.warning("evaluation %s lost PostgreSQL (%s); it will be resumed",
                    evaluation.id, exc)
        return "INTERRUPTED"
    log.exception("evaluation %s stopped by an unexpected error", evaluation.id)
    await _finish(job, evaluation, "FAILED",
                  f"the run stopped on an internal error ({type(exc).__name__})")
    return "FAILED"


async def _after_run(job: JobContext, evaluation: EvaluationRow, run: _Run) -> str:
    """Record how a run that returned normally ended; the status it ended in."""
    if run.stopped_by == "DRAINING" and run.fatal_error is None:
        return await _hand_back(job, evaluation)
    if run.stopped_by == "LOCK_LOST":
        log.warning("evaluation %s lost its run lock; it will be resumed",
                    evaluation.id)
        return "INTERRUPTED"
    if run.stopped_by is not None and run.fatal_error is None:
        return run.stopped_by  # cancelled or deleted: already recorded

    status = "FAILED" if run.fatal_error is not None else "COMPLETED"
    if status == "COMPLETED":
        current = await evaluation_store.get_evaluation(job.pool, evaluation.id)
        if current is not None and current.completed_cases < current.total_cases:
            # Never expected: the run ended with cases unanswered. Leaving it
            # IN_PROGRESS lets the recovery sweep run them.
            log.error("evaluation %s ended its run with %d of %d cases done; it"
                      " will be resumed", evaluation.id, current.completed_cases,
                      current.total_cases)
            return "INCOMPLETE"
    if not await _finish(job, evaluation, status, run.fatal_error):
        # A cancel landed between the last result and this update.
        current = await evaluation_store.evaluation_status(job.pool, evaluation.id)
        return current or "DELETED"
    return status


async def _hand_back(job: JobContext, evaluation: EvaluationRow) -> str:
    """The worker is shutting down: queue the rest of the run as a new
    attempt, for another worker or this one once it is back."""
    current = await evaluation_store.get_evaluation(job.pool, evaluation.id)
    if current is None:
        return "DELETED"
    if current.is_finished:
        return current.status
    if current.completed_cases >= current.total_cases:
        # The last answers came in while draining: nothing is left to hand on.
        await _finish(job, evaluation, "COMPLETED", None)
        return "COMPLETED"
    new_attempt = await evaluation_store.next_attempt(job.pool, evaluation.id,
                                                      evaluation.attempt)
    if new_attempt is None:
        return current.status
    if job.arq is not None:
        await queue.enqueue_evaluation(job.arq, job.redis_prefix, evaluation.id,
                                       new_attempt)
    # Without a queue at hand, the recovery sweep finds the new attempt.
    log.info("evaluation %s handed back at %d of %d cases: attempt %s queued",
             evaluation.id, current.completed_cases, current.total_cases,
             new_attempt)
    return "HANDED_BACK"


async def _change_status(job: JobContext, evaluation: EvaluationRow, to_status: str,
                         *, from_statuses: tuple[str, ...],
                         error: str | None = None) -> bool:
    # Only this attempt's own transitions: an evaluation cancelled and run
    # again meanwhile belongs to the next attempt.
    changed = await evaluation_store.change_status(
        job.pool, evaluation.id, to_status, from_statuses=from_statuses, error=error,
        attempt=evaluation.attempt)
    if changed is None:
        return False
    await events.publish(job.redis, job.redis_prefix, [changed[1]])
    return True


async def _finish(job: JobContext, evaluation: EvaluationRow, status: str,
                  error: str | None) -> bool:
    """Record the final status; False if the evaluation had already ended."""
    if error is not None:
        log.warning("evaluation %s failed: %s", evaluation.id, error)
    return await _change_status(job, evaluation, status, error=error,
                                from_statuses=("QUEUED", "IN_PROGRESS"))


class _Run:
    def __init__(self, job: JobContext, evaluation: EvaluationRow,
                 template: PromptTemplate, scorer: Scorer,
                 lock: run_locks.RunLock, part_cases: int, *, lead: bool) -> None:
        self.job = job
        self.lock = lock
        # The lead waits for the parts helpers hold, and takes over any a
        # helper leaves unfinished; a helper ends when no part is free.
        self.lead = lead
        self.parts_run = 0
        self.part_cases = part_cases
        # Per part being run: cases fed and not yet stored, and whether all
        # its cases have been fed; a part is let go once both are done.
        self.unstored: collections.Counter[int] = collections.Counter()
        self.fed_parts: set[int] = set()
        self.evaluation = evaluation
        self.template = template
        self.scorer = scorer
        self.options = CallOptions(
            model=evaluation.model, system_prompt=evaluation.system_prompt,
            temperature=evaluation.temperature, max_tokens=evaluation.max_tokens)
        self.cases: asyncio.Queue[TestCaseRow | None] = asyncio.Queue(
            evaluation.concurrency * 2)
        self.results: asyncio.Queue[NewResult | None] = asyncio.Queue(
            WRITE_BATCH_MAX * 2)
        self.stopping = asyncio.Event()
        self.throttle = Throttle(evaluation.concurrency)
        self.endpoint = job.endpoint_limit(evaluation.model)
        self.failures_in_a_row = 0
        self.failure_limit = max(_MIN_FAILURES_IN_A_ROW, 2 * evaluation.concurrency)
        self.callers: list[asyncio.Task[None]] = []
        self.fatal_error: str | None = None
        self.stopped_by: str | None = None

    async def execute(self) -> None:
        # A task group: if the writer or a caller fails, everything stops at
        # once instead of waiting on a queue nobody empties.
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(self._watch_status(), name="watcher")
            drain_watcher = group.create_task(self._watch_draining(),
                                              name="drain-watcher")
            writer = group.create_task(self._write_results(), name="writer")
            self.callers = [
                group.create_task(self._call_model(), name=f"caller-{i}")
                for i in range(self.evaluation.concurrency)]
            await self._feed_cases()
            # Callers cancelled by a hard stop end with CancelledError.
            await asyncio.gather(*self.callers, return_exceptions=True)
            await self.results.put(None)
            await writer
            watcher.cancel()
            drain_watcher.cancel()

    def stop(self, *, fatal_error: str | None = None,
             stopped_by: str | None = None, abandon_calls: bool = True) -> None:
        """Start no new model call and, unless draining, abandon the calls in
        flight; results handed to the writer are still stored if the
        evaluation is running (a fatal error, a drain), and dropped if it is
        not (a cancel)."""
        if fatal_error is not None and self.fatal_error is None:
            self.fatal_error = fatal_error
        if stopped_by is not None and self.stopped_by is None:
            self.stopped_by = stopped_by
        self.stopping.set()
        if not abandon_calls:
            return
        current = asyncio.current_task()
        for caller in self.callers:
            if caller is not current:
                caller.cancel()

    async def _feed_cases(self) -> None:
        """Feed the cases without a result, a part at a time, taking each
        part's lock first: a part another worker holds is left to it, and
        the lead comes back for it until it is done."""
        left = list(range(math.ceil(self.evaluation.total_cases
                                    / self.part_cases)))
        seen_held: set[int] = set()
        while left and not self.stopping.is_set():
            held_elsewhere = []
            for part in left:
                if self.stopping.is_set():
                    break
                first, last = self._bounds(part)
                if not await evaluation_store.part_has_cases_without_result(
                        self.job.pool, self.evaluation, first, last):
                    continue
                if not await self.lock.take_part(part):
                    held_elsewhere.append(part)
                    seen_held.add(part)
                    continue
                if part in seen_held:
                    # Left unfinished by a runner that may not know yet.
                    await sleep_unless_stopping(self.stopping, TAKEOVER_GRACE_S)
                self.parts_run += 1
                await self._feed_part(part, first, last)
            left = held_elsewhere if self.lead else []
            if left:
                await sleep_unless_stopping(self.stopping, WATCH_INTERVAL_S)
        for _ in range(self.evaluation.concurrency):
            await self._put_unless_stopping(None)

    def _bounds(self, part: int) -> tuple[int, int]:
        first = part * self.part_cases
        return first, min(first + self.part_cases, self.evaluation.total_cases) - 1

    async def _feed_part(self, part: int, first: int, last: int) -> None:
        await self._feed_part_cases(part, first, last)
        self.fed_parts.add(part)
        if self.unstored[part] == 0 and not self.stopping.is_set():
            await self.lock.release_part(part)

    async def _feed_part_cases(self, part: int, first: int, last: int) -> None:
        after_position = first - 1
        while not self.stopping.is_set():
            # A runner whose lock connection went must not feed another page:
            # another runner may already have its part.
            if not await self.lock.still_held():
                self.stop(stopped_by="LOCK_LOST")
                return
            page = await evaluation_store.cases_without_result(
                self.job.pool, self.evaluation, after_position, FEED_PAGE_SIZE)
            for case in page:
                # Only this part's cases (and so only the cases the evaluation
                # was created over: cases appended to the test set later
                # belong to later evaluations).
                if case.position > last:
                    return
                self.unstored[part] += 1
                await self._put_unless_stopping(case)
                if self.stopping.is_set():
                    return
            if len(page) < FEED_PAGE_SIZE:
                return
            after_position = page[-1].position

    async def _put_unless_stopping(self, case: TestCaseRow | None) -> None:
        # Waiting on two futures costs more than the rest of a case's
        # bookkeeping; it is needed only when the queue makes one wait.
        if not self.cases.full():
            self.cases.put_nowait(case)
            return
        await self._unless_stopping(self.cases.put(case))

    async def _call_model(self) -> None:
        while True:
            case = (self.cases.get_nowait() if not self.cases.empty()
                    else await self._unless_stopping(self.cases.get()))
            if case is None or self.stopping.is_set():
                return
            result = await self._answer(case)
            if result is not None:
                await self.results.put(result)

    async def _unless_stopping(self, step: Awaitable[T]) -> T | None:
        """`step`'s result, or None as soon as the run is stopping."""
        work = asyncio.ensure_future(step)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()  # this task was cancelled: leave nothing behind
            raise
        finally:
            stop.cancel()
        if not work.done():
            work.cancel()
            return None
        return work.result()

    async def _answer(self, case: TestCaseRow) -> NewResult | None:
        try:
            prompt = self.template.render(case.input,
                                          time_limit_s=RENDER_TIME_LIMIT_S)
        except TemplateError as exc:
            return _failed(case, f"template_error: {exc}")

        try:
            answer = await self._ask(prompt)
        except ModelError as exc:
            if exc.fatal:
                self.stop(fatal_error=str(exc))
                return None
            self._count_failure(exc)
            return _failed(case, str(exc), exc.latency_ms, exc.output)
        if answer is None:
            return None  # stopping: the case is left to the next attempt
        self.failures_in_a_row = 0

        output = answer.output
        try:
            score = self.scorer.score(output, case.expected_output)
        except ScoringError as exc:
            return _failed(case, f"scoring_error: {exc}", answer.latency_ms, output)
        return NewResult(
            test_case_id=case.id, position=case.position, output=output,
            score=score.value, passed=score.passed, error=None,
            latency_ms=answer.latency_ms,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
        )

    def _count_failure(self, error: ModelError) -> None:
        if error.kind not in _ENDPOINT_DOWN_KINDS:
            return
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.failure_limit:
            self.stop(fatal_error=f"the model endpoint failed {self.failures_in_a_row}"
                      f" calls in a row; the last: {error}")

    async def _ask(self, prompt: str) -> ModelAnswer | None:
        """The model's answer, asked again for as long as the endpoint merely
        rate limits the run; any other failure raises its ModelError. None if
        the run stops before the question could be put."""
        while True:
            async with (self.throttle.slot(self.stopping) as free,
                        self.endpoint.call(self.stopping) as permitted):
                if not (free and permitted):
                    return None
                try:
                    answer = await self.job.model_client.complete(prompt,
                                                                  self.options)
                except ModelError as exc:
                    if exc.kind != "rate_limited":
                        raise
                    limited = exc
                else:
                    self.throttle.answered()
                    return answer
            if self.stopping.is_set():
                return None
            await self.endpoint.rate_limited()
            await self._hold_off(limited)

    async def _hold_off(self, limited: ModelError) -> None:
        waited_s = self.throttle.limited_for_s()
        if waited_s > self.job.rate_limit_max_wait_s:
            raise ModelError(
                "rate_limited", f"the model endpoint rate limited every call for"
                f" {waited_s:.0f}s", fatal=True)
        pause_s = self.throttle.rate_limited(limited.retry_after_s)
        if pause_s is None:
            return
        log.warning("evaluation %s is rate limited by the model endpoint: holding"
                    " off %.1fs, then %d call(s) at a time", self.evaluation.id,
                    pause_s, self.throttle.limit)
        event = await evaluation_store.record_rate_limit(
            self.job.pool, self.evaluation.id, pause_s)
        if event is not None:
            await events.publish(self.job.redis, self.job.redis_prefix, [event])

    async def _write_results(self) -> None:
        done = False
        while not done:
            batch = [await self.results.get()]
            while len(batch) < WRITE_BATCH_MAX and not self.results.empty():
                batch.append(self.results.get_nowait())
            if batch[-1] is None:
                done = True
                batch.pop()
            if batch:
                await self._store(batch)

    async def _store(self, batch: list[NewResult]) -> None:
        status, stored_events = await evaluation_store.store_results(
            self.job.pool, self.evaluation.id, batch)
        await events.publish(self.job.redis, self.job.redis_prefix, stored_events)
        if status != "IN_PROGRESS":
            self.stop(stopped_by=status)
            return
        await self._let_go_of_finished_parts(batch)

    async def _let_go_of_finished_parts(self, batch: list[NewResult]) -> None:
        for result in batch:
            part = result.position // self.part_cases
            self.unstored[part] -= 1
            if self.unstored[part] == 0 and part in self.fed_parts:
                del self.unstored[part]
                await self.lock.release_part(part)

    async def _watch_draining(self) -> None:
        await self.job.draining.wait()
        log.info("evaluation %s: worker shutting down; finishing %d call(s) in"
                 " flight", self.evaluation.id, self.throttle.in_flight)
        self.stop(stopped_by="DRAINING", abandon_calls=False)

    async def _watch_status(self) -> None:
        # The writer notices a cancel on its next batch; this catches it while
        # every caller is still waiting on a slow model. It also stops a run
        # whose lock went with its connection, before a worker that took the
        # run over and this one both call the model for the same cases.
        # On through a drain, too: a cancel or a lost lock must still abandon
        # the calls in flight. execute() cancels this once the run is over.
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if not await self.lock.still_held():
                self.stop(stopped_by="LOCK_LOST")
                return
            status = await evaluation_store.evaluation_status(
                self.job.pool, self.evaluation.id)
            if status != "IN_PROGRESS":
                self.stop(stopped_by=status or "DELETED")
                return


# InternalClientError ("cannot switch to state ...; another operation is in
# progress") comes from a pooled connection left mid-operation when its server
# process was terminated under it: the database going away as seen from
# asyncpg's side, not a fault of the run.
_DATABASE_GONE = (*db.UNAVAILABLE, asyncpg.InternalClientError)


def _lost_database(exc: BaseException) -> bool:
    """Whether `exc` (or every error of a task group) is the database going
    away, as opposed to a fault of the run itself."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_lost_database(inner) for inner in exc.exceptions)
    return isinstance(exc, _DATABASE_GONE)


def _failed(case: TestCaseRow, error: str, latency_ms: int | None = None,
            output: str | None = None) -> NewResult:
    return NewResult(
        test_case_id=case.id, position=case.position, output=output, score=None,
        passed=None, error=error, latency_ms=latency_ms, prompt_tokens=None,
        completion_tokens=None,
    )

