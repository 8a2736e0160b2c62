"""Faults of the services Assay stands on: PostgreSQL restarting under a run,
a worker told to stop mid-run, Redis forgetting its queue.

The workers are real `assay worker` processes, and each test has a database
of its own. The PostgreSQL and Redis that get broken are private servers on
free loopback ports, started here: the ones the rest of the suite shares are
never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from app import services
from app.jobs import queue
from app.llm.simulator import SimulatorConfig, create_simulator_app
from app.settings import Settings
from app.store import db
from tests.conftest import ADMIN_DATABASE_URL, RUN_ID, _with_database
from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.stack import GraphQLError, free_port, make_key, running_stack, serving
from tests.test_progress import assert_contiguous, subscribe
from tests.test_recovery import (
    start_redis,
    stored_results,
    wait_for_progress,
    worker_process,
)

EVALUATION_STATE = """
query($id: ID!) { evaluation(id: $id) { status completedCases totalCases } }"""


# --- A simulated model that keeps a record of its calls ------------------------


class CallLog:
    """ASGI middleware in front of the simulator noting when each model call
    arrives, on this process's monotonic clock."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.arrivals: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.arrivals.append(time.monotonic())
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def recorded_model(
        database_url: str,
        config: SimulatorConfig) -> AsyncIterator[tuple[str, CallLog]]:
    """A simulated model; yields its OpenAI base URL and the log of its calls."""
    calls = CallLog(create_simulator_app(database_url, config))
    async with serving(calls) as url:
        yield f"{url}/v1", calls


# --- A database of the test's own ---------------------------------------------


@pytest.fixture
async def own_database(settings) -> AsyncIterator[Settings]:
    """Settings naming a fresh, migrated database of this test's own on the
    shared server, dropped afterwards. Every worker's recovery sweep takes up
    every unfinished evaluation of its database: runs that other tests leave
    unfinished would otherwise be run here too, and counted."""
    name = f"assay_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        own = settings.replace(
            database_url=_with_database(ADMIN_DATABASE_URL, name))
        await db.migrate(own)
        yield own
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def own_pool(own_database) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(own_database)
    yield pool
    await pool.close()


# --- Processes and servers ------------------------------------------------------


async def seconds_until_exit(process: subprocess.Popen, timeout_s: float) -> float:
    """How long `process` took to exit, waiting without blocking the event loop
    (the API and the model the process talks to run on it)."""
    started = time.monotonic()
    while process.poll() is None:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"pid {process.pid} still running after"
                                 f" {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[services.LocalPostgres]:
    """A PostgreSQL cluster of this test's own, in a temporary directory."""
    programs = services._find_postgres_programs()
    if isinstance(programs, str):
        pytest.skip(f"no private PostgreSQL can be started: {programs}")
    # Not under pytest's tmp_path: when the tests run as root, PostgreSQL runs
    # as the postgres user, who must be able to enter the directory.
    data_dir = Path(tempfile.mkdtemp(prefix="assay-pg-fault-"))
    data_dir.chmod(0o755)
    postgres = services.LocalPostgres(programs, data_dir)
    try:
        await postgres.start(report=lambda _: None)
        yield postgres
    finally:
        await postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def crash_postgres(postgres: services.LocalPostgres) -> None:
    """Stop the server as a crash would: every connection cut at once, no
    checkpoint, crash recovery on the next start."""
    await asyncio.to_thread(
        subprocess.run,
        [*postgres.programs.run_as, postgres.programs.pg_ctl, "-D",
         str(postgres.pgdata), "-m", "immediate", "-w", "stop"],
        check=True, capture_output=True)


async def start_evaluation(stack, num_cases: int, concurrency: int) -> str:
    test_set = await create_test_set(stack, arithmetic_cases(num_cases))
    created = await create_evaluation(stack, test_set["id"],
                                      concurrency=concurrency)
    return created["id"]


async def evaluation_row(pool: asyncpg.Pool, evaluation_id: str) -> asyncpg.Record:
    """The stored attempt and how many times the run was recorded COMPLETED."""
    return await pool.fetchrow(
        "SELECT e.attempt, (SELECT count(*) FROM progress_events p"
        "   WHERE p.evaluation_id = e.id AND p.kind = 'STATUS_CHANGED'"
        "     AND p.status = 'COMPLETED') AS completions"
        " FROM evaluations e WHERE e.id = $1",
        int(evaluation_id.removeprefix("ev_")))


# --- PostgreSQL restarts mid-run ------------------------------------------------


async def test_a_postgresql_restart_mid_run_is_survived_without_restarting_a_process(
        settings):
    async with private_postgres() as postgres:
        own = settings.replace(database_url=postgres.url,
                               redis_prefix=settings.redis_prefix + "-pgrestart")
        await db.migrate(own)
        config = SimulatorConfig(accuracy=0.8, latency_ms=200, seed=3)
        async with (recorded_model(own.database_url, config) as (model_url, calls),
                    running_stack(own, with_worker=False) as stack):
            evaluation_id = await start_evaluation(stack, 60, concurrency=4)
            # Never presented before the crash, so the API cannot have it in
            # mind and must read it; the stack's own key it has just taken.
            unseen = dataclasses.replace(stack, key=await make_key(
                own, f"pg-{uuid.uuid4().hex[:6]}", "viewer"))
            async with worker_process(own, model_url) as worker:
                await wait_for_progress(stack, evaluation_id, 12)
                await crash_postgres(postgres)
                # Long enough for calls in flight to come back with nowhere
                # to store their answers.
                await asyncio.sleep(1.0)
                with pytest.raises(GraphQLError) as while_down:
                    await stack.query(EVALUATION_STATE, id=evaluation_id)
                with pytest.raises(GraphQLError) as unseen_while_down:
                    await unseen.query("{ me { role } }")
                socket_while_down = await _websocket_close_code(unseen)
                await postgres.start(report=lambda _: None)
                assert postgres.url == own.database_url, "came back on another port"
                # The API's very first query after the restart must work.
                after_restart = await stack.query(EVALUATION_STATE,
                                                  id=evaluation_id)
                evaluation = await stack.wait_for_status(
                    evaluation_id, "COMPLETED", timeout_s=30)
                worker_ran_throughout = worker.poll() is None
            events, _ = await subscribe(stack, "graphql-transport-ws",
                                        evaluation_id, after=0)

        pool = await db.create_pool(own)
        try:
            results = await stored_results(pool, evaluation_id)
            row = await evaluation_row(pool, evaluation_id)
        finally:
            await pool.close()

    # A retryable refusal, not an authentication one, saying why: for a key
    # the API took a moment ago the query fails, for one it must read the
    # key check does.
    for refused in (while_down.value, unseen_while_down.value):
        assert refused.code == "INTERNAL_SERVER_ERROR"
        assert "database is unavailable" in refused.message
    assert socket_while_down == 1011
    assert after_restart["evaluation"]["totalCases"] == 60
    assert worker_ran_throughout
    assert evaluation["completedCases"] == 60
    assert results == (60, 60)
    assert row["completions"] == 1
    # Resumed by the worker's own sweep once its pool was back.
    assert row["attempt"] >= 2
    # Answers that came back while the database was down were asked again.
    assert len(calls.arrivals) > 60
    assert_contiguous(events, 1)
    assert sum(e["kind"] == "RESULT_ADDED" for e in events) == 60


# --- SIGTERM mid-run ------------------------------------------------------------

# On SIGTERM the worker stops taking jobs and its runs drain: no new model
# call starts, the calls in flight finish and are stored, and each run queues
# its rest as a new attempt (ASSAY_WORKER_DRAIN_S bounds the wait; past it
# arq cancels the runs and hands their jobs back as they are). The worker
# then closes its model client, Redis and pool, and exits 0: within the
# longest call in flight plus a moment.
MODEL_LATENCY_S = 1.5
STOP_BOUND_S = 5.0
# A call that reaches the simulator this soon after the signal was already on
# its way when the signal was sent.
IN_TRANSIT_S = 0.25


async def test_sigterm_drains_the_calls_in_flight_and_hands_the_rest_back(
        own_database, own_pool):
    from arq.constants import in_progress_key_prefix

    own = own_database.replace(redis_prefix=own_database.redis_prefix + "-sigterm")
    config = SimulatorConfig(accuracy=0.8, latency_ms=MODEL_LATENCY_S * 1000,
                             seed=5)
    async with (recorded_model(own.database_url, config) as (model_url, calls),
                running_stack(own, with_worker=False) as stack):
        evaluation_id = await start_evaluation(stack, 16, concurrency=4)
        async with worker_process(own, model_url) as first:
            await wait_for_progress(stack, evaluation_id, 4)
            # The first answers are stored and the next four calls are out.
            await asyncio.sleep(MODEL_LATENCY_S / 2)
            calls_before_signal = len(calls.arrivals)
            signalled_at = time.monotonic()
            first.send_signal(signal.SIGTERM)
            exit_s = await seconds_until_exit(first, timeout_s=30)
            stored_at_exit, _ = await stored_results(own_pool, evaluation_id)

        # A call the worker sent just before it died has landed by now.
        await asyncio.sleep(IN_TRANSIT_S)
        calls_after_signal = [t for t in calls.arrivals
                              if t > signalled_at + IN_TRANSIT_S]
        state_between = await stack.query(EVALUATION_STATE, id=evaluation_id)
        attempt = (await evaluation_row(own_pool, evaluation_id))["attempt"]
        arq = await queue.connect(own.redis_url)
        try:
            job_id = queue.job_id(own.redis_prefix,
                                  int(evaluation_id.removeprefix("ev_")), attempt)
            job_queued = await arq.zscore(queue.queue_name(own.redis_prefix),
                                          job_id)
            job_running = await arq.exists(in_progress_key_prefix + job_id)
        finally:
            await arq.aclose()

        async with worker_process(own, model_url):
            evaluation = await stack.wait_for_status(evaluation_id, "COMPLETED",
                                                     timeout_s=30)

    assert first.returncode == 0
    # Within the longest call in flight, and the bound.
    assert exit_s < STOP_BOUND_S
    # Calls were in flight at the signal: they finished and were stored, and
    # nothing new went out.
    assert calls_before_signal > 4
    assert stored_at_exit == calls_before_signal
    assert calls_after_signal == []
    assert state_between["evaluation"]["status"] == "IN_PROGRESS"
    assert state_between["evaluation"]["completedCases"] == stored_at_exit
    # Handed back on the queue itself, not left for the recovery sweep.
    assert job_queued is not None
    assert job_running == 0
    assert evaluation["completedCases"] == 16
    assert await stored_results(own_pool, evaluation_id) == (16, 16)
    assert (await evaluation_row(own_pool, evaluation_id))["completions"] == 1
    # Drained, not dropped: no case was asked twice.
    assert len(calls.arrivals) == 16


# A restarted worker's first sweep and first poll come at the same moment: the
# sweep must not take the job the worker has only just picked up (marked
# running, its run lock not taken yet) for a dead worker's.
async def test_the_sweep_leaves_alone_a_job_a_worker_has_only_just_picked_up(
        own_database, own_pool):
    from arq.constants import in_progress_key_prefix

    from app.jobs import recovery
    from app.store import run_locks

    own = own_database.replace(redis_prefix=own_database.redis_prefix + "-pickup")
    async with running_stack(own, with_worker=False) as stack:
        created = await start_evaluation(stack, 3, concurrency=1)
    evaluation_id = int(created.removeprefix("ev_"))
    # As a restarted worker finds a run handed back to the queue: an older
    # evaluation, IN_PROGRESS, whose job arq has just marked as running.
    await own_pool.execute(
        "UPDATE evaluations SET status = 'IN_PROGRESS',"
        " created_at = now() - interval '1 minute' WHERE id = $1", evaluation_id)
    arq = await queue.connect(own.redis_url)
    job_id = queue.job_id(own.redis_prefix, evaluation_id, 1)
    await arq.set(in_progress_key_prefix + job_id, b"1")
    try:
        sweeping = asyncio.create_task(
            recovery.sweep(own_pool, arq, own.database_url, own.redis_prefix))
        # The job takes its run lock a moment after it was marked running.
        await asyncio.sleep(0.2)
        async with run_locks.run_lock(own.database_url, evaluation_id,
                                      wait_s=2.0) as job_lock:
            requeued = await sweeping
        still_marked = await arq.exists(in_progress_key_prefix + job_id)
    finally:
        await arq.delete(in_progress_key_prefix + job_id)
        await arq.aclose()

    assert job_lock.held
    assert requeued == 0
    assert still_marked == 1
    assert (await evaluation_row(own_pool, created))["attempt"] == 1


# --- Redis loses its queue --------------------------------------------------------


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed")
async def test_runs_whose_redis_queue_vanished_are_queued_again_from_the_database(
        own_database, own_pool):
    port = free_port()
    own = own_database.replace(
        redis_prefix=own_database.redis_prefix + "-lostqueue",
        redis_url=f"redis://127.0.0.1:{port}/0")
    config = SimulatorConfig(accuracy=0.8, latency_ms=100, seed=9)
    redis = start_redis(port)
    try:
        async with (recorded_model(own.database_url, config) as (model_url, calls),
                    running_stack(own, with_worker=False) as stack):
            # One run in progress whose worker is killed, leaving its job
            # marked as running...
            in_progress = await start_evaluation(stack, 40, concurrency=2)
            async with worker_process(own, model_url) as worker:
                await wait_for_progress(stack, in_progress, 8)
                worker.send_signal(signal.SIGKILL)
                await seconds_until_exit(worker, timeout_s=10)
            # ...and two queued while no worker runs; then Redis forgets it all.
            queued = [await start_evaluation(stack, 20, concurrency=2)
                      for _ in range(2)]

            redis.terminate()
            redis.wait(timeout=10)
            redis = start_redis(port)
            arq = await queue.connect(own.redis_url)
            try:
                keys_left = await arq.dbsize()
            finally:
                await arq.aclose()

            async with worker_process(own, model_url):
                finished = [await stack.wait_for_status(evaluation_id, "COMPLETED",
                                                        timeout_s=40)
                            for evaluation_id in [in_progress, *queued]]
    finally:
        redis.terminate()
        redis.wait(timeout=10)

    assert keys_left == 0
    for evaluation_id, evaluation, num_cases in zip(
            [in_progress, *queued], finished, [40, 20, 20]):
        assert evaluation["completedCases"] == num_cases
        stored = await stored_results(own_pool, evaluation_id)
        assert stored == (num_cases, num_cases)
        row = await evaluation_row(own_pool, evaluation_id)
        # Queued again by the sweep, from its row: Redis had nothing left.
        assert row["attempt"] >= 2
        assert row["completions"] == 1
    # Only the killed worker's dropped calls were asked twice.
    assert len(calls.arrivals) <= 80 + 2 * 2


async def _websocket_close_code(stack) -> int | None:
    """How the API closes a websocket that presents a valid key (None if it
    acknowledges it)."""
    async with websockets.connect(stack.ws_url,
                                  subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": stack.init_payload}))
        try:
            async with asyncio.timeout(10):
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code
        return None
