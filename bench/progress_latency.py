"""Progress latency: from a result being stored to its event at a subscriber.

The benchmark plays the worker's part, so that the pace is exact and the
moment each result was stored is known: it stores results in small batches at
a steady rate, one transaction a batch as the worker does, notes when each
transaction committed, and publishes the batch's events right after. Ten
websocket clients follow the evaluation through `assay serve` and note when
each event arrives; every time comes from time.perf_counter in this process.
"Published to received" starts when Redis acknowledges the publish, by which
time Redis has handed the message to the API: it is the API's own share.

    .venv/bin/python bench/progress_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import events, ids  # noqa: E402
from app.store import db  # noqa: E402
from app.store import evaluations as evaluation_store  # noqa: E402
from app.store.rows import NewResult, TestCaseRow  # noqa: E402
from bench import common  # noqa: E402

RESULTS_PER_S = 500
RESULTS_PER_BATCH = 5
NUM_SUBSCRIBERS = 10
SUBSCRIPTION = ("subscription($id: ID!) {"
                " evaluationProgress(evaluationId: $id) { sequence kind } }")
# Beyond the run itself: how long the streams may take to start and to end.
SLACK_S = 60.0


async def run(quick: bool) -> dict[str, float]:
    duration_s = 3 if quick else 10
    async with common.throwaway_settings() as settings:
        port = common.free_port()
        server = common.start(["serve", "--port", str(port)],
                              common.env_for(settings))
        pool = await db.create_pool(settings)
        redis = aioredis.from_url(settings.redis_url)
        try:
            key = await common.api_key(pool)
            worker = _Worker(pool, redis, settings.redis_prefix)
            await worker.start_evaluation(RESULTS_PER_S * duration_s)
            await common.wait_for_http(f"http://127.0.0.1:{port}/healthz")
            url = f"ws://127.0.0.1:{port}/graphql"
            subscribers = [_Subscriber(url, key, worker.evaluation_id)
                           for _ in range(NUM_SUBSCRIBERS)]
            await _follow_while_working(subscribers, worker, duration_s)
        finally:
            common.stop(server)
            await redis.aclose()
            await pool.close()
    return _figures(subscribers, worker)


class _Subscriber:
    """One websocket client following the evaluation; keeps the time each
    RESULT_ADDED event arrived, by sequence."""

    def __init__(self, url: str, key: str, evaluation_id: int) -> None:
        self.url = url
        self.init = {"type": "connection_init",
                     "payload": {"authorization": f"Bearer {key}"}}
        self.subscribe = {"id": "1", "type": "subscribe", "payload": {
            "query": SUBSCRIPTION,
            "variables": {"id": ids.encode(ids.Kind.EVALUATION, evaluation_id)}}}
        # Set on the SNAPSHOT: the server registers its listener before reading
        # the snapshot, so from then on no event published can pass it by.
        self.listening = asyncio.Event()
        self.received_at: dict[int, float] = {}
        self.num_repeated = 0

    async def follow(self) -> None:
        # proxy=None: a proxy set in the environment must not see loopback.
        async with connect(self.url, proxy=None,
                           subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
            await ws.send(json.dumps(self.init))
            async for raw in ws:
                # Timed before decoding, so only the wire and the loop count.
                received_at = time.perf_counter()
                message = json.loads(raw)
                payload = message.get("payload") or {}
                if message["type"] == "connection_ack":
                    await ws.send(json.dumps(self.subscribe))
                elif message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif message["type"] == "complete":
                    return
                elif message["type"] == "next" and "errors" not in payload:
                    self._note(payload["data"]["evaluationProgress"], received_at)
                else:
                    raise RuntimeError(f"the subscription failed: {message}")
        raise RuntimeError("the server closed a websocket before the stream ended")

    def _note(self, event: dict, received_at: float) -> None:
        sequence = event["sequence"]
        if event["kind"] == "SNAPSHOT":
            self.listening.set()
        elif event["kind"] == "RESULT_ADDED":
            self.num_repeated += sequence in self.received_at
            self.received_at[sequence] = received_at


class _Worker:
    """The worker's part: starts the evaluation, stores its results and
    publishes their events, then finishes it."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis,
                 prefix: str) -> None:
        self.pool, self.redis, self.prefix = pool, redis, prefix
        self.evaluation_id = 0
        self.cases: list[TestCaseRow] = []
        # By sequence: when its transaction committed, when Redis took it.
        self.times: dict[int, tuple[float, float]] = {}
        self.elapsed_s = 0.0

    async def start_evaluation(self, num_cases: int) -> None:
        new = evaluation_store.NewEvaluation(
            workspace_id=await common.workspace_id(self.pool),
            test_set_id=await common.arithmetic_test_set(self.pool, num_cases),
            name=None, model="assay-simulator", prompt_template="{{ question }}",
            system_prompt=None, temperature=None, max_tokens=None,
            scorer_type="NUMERIC", scorer_options={}, concurrency=8,
            queue_prefix=self.prefix)
        evaluation, _ = await evaluation_store.create_evaluation(self.pool, new)
        self.evaluation_id = evaluation.id
        self.cases = await evaluation_store.cases_without_result(
            self.pool, evaluation, -1, num_cases)
        await self._change_status("IN_PROGRESS", from_status="QUEUED")

    async def store_at_pace(self) -> None:
        started = time.perf_counter()
        for first in range(0, len(self.cases), RESULTS_PER_BATCH):
            # Due times count from the start, not from the previous batch: a
            # batch that ran late is caught up on, and the rate stays exact.
            due = started + first / RESULTS_PER_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            batch = [NewResult(
                test_case_id=case.id, position=case.position,
                output=case.expected_output, score=1.0, passed=True, error=None,
                latency_ms=1, prompt_tokens=12, completion_tokens=2)
                for case in self.cases[first:first + RESULTS_PER_BATCH]]
            status, stored = await evaluation_store.store_results(
                self.pool, self.evaluation_id, batch)
            committed_at = time.perf_counter()
            if status != "IN_PROGRESS" or len(stored) != len(batch):
                raise RuntimeError(f"stored {len(stored)} of {len(batch)} results;"
                                   f" the evaluation is {status}")

            # Stored before announced, as the worker does.
            await events.publish(self.redis, self.prefix, stored)
            published_at = time.perf_counter()
            for event in stored:
                self.times[event.sequence] = (committed_at, published_at)
        self.elapsed_s = time.perf_counter() - started

    async def finish(self) -> None:
        """COMPLETED, which ends every subscriber's stream."""
        await self._change_status("COMPLETED", from_status="IN_PROGRESS")

    async def _change_status(self, to_status: str, *, from_status: str) -> None:
        _, event = await evaluation_store.change_status(
            self.pool, self.evaluation_id, to_status, from_statuses=(from_status,))
        await events.publish(self.redis, self.prefix, [event])


async def _follow_while_working(subscribers: list[_Subscriber], worker: _Worker,
                                duration_s: int) -> None:
    try:
        async with (asyncio.timeout(duration_s + SLACK_S),
                    asyncio.TaskGroup() as group):
            for subscriber in subscribers:
                group.create_task(subscriber.follow())
            for subscriber in subscribers:
                await subscriber.listening.wait()
            await worker.store_at_pace()
            await worker.finish()
    except TimeoutError:
        raise RuntimeError(f"the streams did not end within {SLACK_S:.0f} s of"
                           " the run's end") from None
    except ExceptionGroup as failed:
        # The harness prints only the message: give it the subscriber's own.
        raise failed.exceptions[0] from failed


def _figures(subscribers: list[_Subscriber], worker: _Worker) -> dict[str, float]:
    num_missing = sum(1 for s in subscribers for sequence in worker.times
                      if sequence not in s.received_at)
    num_repeated = sum(s.num_repeated for s in subscribers)
    if num_missing or num_repeated:
        raise RuntimeError(f"subscribers missed {num_missing} event(s) and got"
                           f" {num_repeated} twice; each must get every one once")

    arrivals = [(worker.times[sequence], at) for s in subscribers
                for sequence, at in s.received_at.items()]
    stored_per_s = len(worker.times) / worker.elapsed_s
    common.report("results stored/s", stored_per_s, "/s",
                  target=f"{RESULTS_PER_S}/s")
    figures = {
        **_percentiles("stored to received", "progress", target="p99 under 25 ms",
                       values_ms=[(at - t[0]) * 1000 for t, at in arrivals]),
        **_percentiles("published to received", "progress_publish_to_receive",
                       values_ms=[(at - t[1]) * 1000 for t, at in arrivals])}

    # Over the span from the first commit to the last arrival: a server that
    # falls behind stretches the span, and the rate shows it.
    span_s = (max(at for _, at in arrivals)
              - min(committed for committed, _ in worker.times.values()))
    figures["progress_events_per_s_delivered"] = len(arrivals) / span_s
    common.report(f"events delivered/s, {NUM_SUBSCRIBERS} subscribers",
                  figures["progress_events_per_s_delivered"], "/s",
                  ceiling=stored_per_s * NUM_SUBSCRIBERS, ceiling_name="offered")
    return {name: round(value, 2) for name, value in figures.items()}


def _percentiles(label: str, key: str, *, values_ms: list[float],
                 target: str = "") -> dict[str, float]:
    p50, p99 = common.percentile(values_ms, 50), common.percentile(values_ms, 99)
    common.report(f"{label}, p50", p50, "ms")
    common.report(f"{label}, p99", p99, "ms", target=target)
    return {f"{key}_p50_ms": p50, f"{key}_p99_ms": p99}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(asyncio.run(run(parser.parse_args().quick)))
