"""The whole stack under load: many evaluations at once, each followed by several
clients, while the API keeps answering other requests.

Twenty evaluations run at once on one worker, five subscribers follow each of
them over graphql-transport-ws, and a probe keeps sending a small query and
timing it. Three subscribers start as their evaluation is created, two join
when it is half done: one from a SNAPSHOT, one replaying from the first event.

Size: 20 evaluations of 50 cases, not the 200 first planned, so that the
test stays well under a minute on a 2-core machine. The API, the worker, the
simulated model and all 100 clients share the test's event loop (and the two
cores with PostgreSQL): 20 x 200 took 54 s there even with the worker running
only four evaluations at a time, and 20 x 100 with all twenty at once took
42-57 s. 20 x 50 runs in 15-30 s, depending on what else the machine runs.

What must hold exactly is that no subscriber loses, repeats or reorders an
event and that every case is stored once. The probe's latency is that of the
whole shared loop, so its bound is loose on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import Any

import asyncpg
import pytest

from app.llm.simulator import SimulatorConfig
from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.stack import Stack, running_stack, simulator
from tests.test_progress import assert_contiguous, subscribe

NUM_EVALUATIONS = 20
NUM_CASES = 50
NUM_EARLY_SUBSCRIBERS = 3  # per evaluation, plus two late ones
# IN_PROGRESS, one RESULT_ADDED per case, COMPLETED.
NUM_EVENTS = NUM_CASES + 2

PROBE = "{ testSets(first: 1) { totalCount } }"
PROBE_PAUSE_S = 0.02
# Timing is not what this test is about: the bound only catches an API that
# stops answering while the worker and the subscribers keep it busy.
PROBE_LATENCY_BOUND_S = 5.0
# A hang fails here, with the stack shut down properly, instead of running
# into pytest-timeout, which cuts the whole session short.
RUN_BOUND_S = 60


@dataclasses.dataclass
class Followed:
    """One evaluation and what each of its subscribers received."""

    evaluation_id: str
    # From the late subscriber that replays from the first event: every event
    # of the run, and the reference the others are compared with.
    history: list[dict[str, Any]]
    # From the subscribers that start with a SNAPSHOT, early or late.
    from_snapshots: list[list[dict[str, Any]]]


@dataclasses.dataclass
class Probe:
    """Sends the small query over and over; records how long each took."""

    stack: Stack
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                data = await self.stack.query(PROBE)
                assert data["testSets"]["totalCount"] >= NUM_EVALUATIONS
            except Exception as exc:  # kept, and asserted on after the run
                self.failures.append(repr(exc))
            else:
                self.latencies_s.append(time.perf_counter() - started)
            await asyncio.sleep(PROBE_PAUSE_S)


@pytest.mark.timeout(2 * RUN_BOUND_S)
async def test_a_hundred_subscribers_of_twenty_runs_get_every_event_once_in_order(
        settings, database_url, pool):
    own = settings.replace(redis_prefix=settings.redis_prefix + "-load")
    model = SimulatorConfig(accuracy=0.8, seed=23)
    async with simulator(database_url, model) as model_url, \
            running_stack(own.replace(openai_base_url=model_url),
                          max_evaluations=NUM_EVALUATIONS) as stack:
        test_sets = await asyncio.gather(*(
            create_test_set(stack, arithmetic_cases(NUM_CASES), name="load")
            for _ in range(NUM_EVALUATIONS)))

        probe = Probe(stack)
        probing = asyncio.create_task(probe.run())
        started = time.perf_counter()
        try:
            async with asyncio.timeout(RUN_BOUND_S):
                followed = await asyncio.gather(*(
                    start_and_follow(stack, pool, test_set["id"])
                    for test_set in test_sets))
        finally:
            wall_s = time.perf_counter() - started
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)

        evaluations = [
            await stack.wait_for_status(run.evaluation_id, "COMPLETED", timeout_s=5)
            for run in followed]

    report(followed, probe, wall_s)
    for run in followed:
        assert_history_is_whole(run.history)
        for events in run.from_snapshots:
            assert_snapshot_then_rest_of_history(events, run.history)
    assert all(e["completedCases"] == NUM_CASES for e in evaluations)
    assert await stored_results_by_evaluation(pool, followed) == {
        run.evaluation_id: (NUM_CASES, NUM_CASES) for run in followed}
    assert probe.failures == []
    assert max(probe.latencies_s) < PROBE_LATENCY_BOUND_S


async def start_and_follow(stack: Stack, pool: asyncpg.Pool,
                           test_set_id: str) -> Followed:
    """Start an evaluation and follow it: some subscribers at once, while the
    worker may already be running it, and two more once it is half done."""
    evaluation_id = (await create_evaluation(stack, test_set_id))["id"]

    async with asyncio.TaskGroup() as group:
        early = [group.create_task(follow(stack, evaluation_id))
                 for _ in range(NUM_EARLY_SUBSCRIBERS)]
        await wait_until_half_done(pool, evaluation_id)
        late = group.create_task(follow(stack, evaluation_id))
        replay = group.create_task(follow(stack, evaluation_id, after=0))

    from_snapshots = [task.result() for task in (*early, late)]
    return Followed(evaluation_id, replay.result(), from_snapshots)


async def follow(stack: Stack, evaluation_id: str,
                 after: int | None = None) -> list[dict[str, Any]]:
    events, error = await subscribe(stack, "graphql-transport-ws", evaluation_id,
                                    after, timeout_s=RUN_BOUND_S)
    assert error is None, f"{evaluation_id}: {error}"
    return events


async def wait_until_half_done(pool: asyncpg.Pool, evaluation_id: str) -> None:
    # Read from the database, not the API, so that waiting adds nothing to
    # the load the probe measures.
    while True:
        row = await pool.fetchrow(
            "SELECT completed_cases, status FROM evaluations WHERE id = $1",
            row_id(evaluation_id))
        if row["completed_cases"] >= NUM_CASES // 2 or row["status"] in (
                "COMPLETED", "FAILED", "CANCELLED"):
            return
        await asyncio.sleep(0.2)


def assert_history_is_whole(history: list[dict[str, Any]]) -> None:
    assert_contiguous(history, 1)
    assert len(history) == NUM_EVENTS
    assert (history[0]["kind"], history[0]["status"]) == (
        "STATUS_CHANGED", "IN_PROGRESS")
    assert (history[-1]["kind"], history[-1]["status"]) == (
        "STATUS_CHANGED", "COMPLETED")
    assert history[-1]["completedCases"] == NUM_CASES

    results = [e for e in history if e["kind"] == "RESULT_ADDED"]
    case_ids = {e["result"]["testCase"]["id"] for e in results}
    assert len(results) == len(case_ids) == NUM_CASES


def assert_snapshot_then_rest_of_history(events: list[dict[str, Any]],
                                         history: list[dict[str, Any]]) -> None:
    snapshot, rest = events[0], events[1:]
    assert snapshot["kind"] == "SNAPSHOT"
    # history[i] holds sequence i + 1, so what follows the snapshot starts at
    # history[its sequence]; the stream ended after COMPLETED, as history did.
    seen = snapshot["sequence"]
    assert rest == history[seen:]
    assert snapshot["completedCases"] == (
        history[seen - 1]["completedCases"] if seen else 0)


async def stored_results_by_evaluation(
        pool: asyncpg.Pool, followed: list[Followed]) -> dict[str, tuple[int, int]]:
    """Per evaluation: result rows, and distinct test cases among them."""
    rows = await pool.fetch(
        "SELECT evaluation_id, count(*) AS n, count(DISTINCT test_case_id) AS cases"
        " FROM evaluation_results WHERE evaluation_id = ANY($1::bigint[])"
        " GROUP BY evaluation_id",
        [row_id(run.evaluation_id) for run in followed])
    return {f"ev_{row['evaluation_id']}": (row["n"], row["cases"]) for row in rows}


def row_id(evaluation_id: str) -> int:
    return int(evaluation_id.removeprefix("ev_"))


def report(followed: list[Followed], probe: Probe, wall_s: float) -> None:
    num_events = sum(len(run.history) + sum(map(len, run.from_snapshots))
                     for run in followed)
    snapshot_sequences = [events[0]["sequence"]
                          for run in followed for events in run.from_snapshots]
    latencies_ms = sorted(1000 * s for s in probe.latencies_s) or [math.nan]
    print(
        f"\nload: {NUM_EVALUATIONS} evaluations x {NUM_CASES} cases, run at once,"
        f" {sum(1 + len(run.from_snapshots) for run in followed)} subscribers:"
        f" {wall_s:.1f} s wall, {num_events} events received; snapshots at the"
        f" start {snapshot_sequences.count(0)}, mid-run"
        f" {sum(0 < s < NUM_EVENTS for s in snapshot_sequences)}, at the end"
        f" {snapshot_sequences.count(NUM_EVENTS)}; small query:"
        f" {len(probe.latencies_s)} answered, {len(probe.failures)} failed,"
        f" p50 {percentile(latencies_ms, 50):.0f} ms,"
        f" p99 {percentile(latencies_ms, 99):.0f} ms,"
        f" max {latencies_ms[-1]:.0f} ms")


def percentile(ordered: list[float], percent: int) -> float:
    """Nearest rank: the smallest value with `percent`% of values at or below."""
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]
