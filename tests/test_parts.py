"""One evaluation shared by several workers, a part of its cases each.

Each worker here calls a fake model of its own, so the calls each model
received tell which worker ran which case.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.jobs.evaluation import JobContext
from app.store import run_locks
from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.fake_model import fake_model
from tests.stack import running_stack, worker

PARTS_OF_TEN = {"part_cases": 10, "workers_per_evaluation": 3}


async def _stored(pool, evaluation_id: str) -> tuple[int, int, int]:
    """Results, distinct test cases among them, and progress events stored."""
    row_id = int(evaluation_id.removeprefix("ev_"))
    return tuple(await pool.fetchrow(
        "SELECT (SELECT count(*) FROM evaluation_results WHERE evaluation_id = $1),"
        " (SELECT count(DISTINCT test_case_id) FROM evaluation_results"
        "  WHERE evaluation_id = $1),"
        " (SELECT count(*) FROM progress_events WHERE evaluation_id = $1)", row_id))


async def test_workers_share_one_evaluation_and_call_each_case_once(settings, pool):
    own = settings.replace(redis_prefix=f"{settings.redis_prefix}-parts",
                           **PARTS_OF_TEN)
    async with (fake_model() as first_model, fake_model() as second_model,
                fake_model() as third_model):
        models = [first_model, second_model, third_model]
        for model in models:
            model.latency_s = 0.15
        async with running_stack(own, with_worker=False) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(150))
            async with contextlib.AsyncExitStack() as workers:
                # One job at a time each, so that a helper job cannot land on
                # the worker running the lead (it would be sent back to the
                # queue for another, which polls first is chance).
                # One of them would cut parts of 7 cases: whichever leads,
                # every runner must cut them as the lead does.
                for model, part_cases in zip(models, (10, 10, 7)):
                    await workers.enter_async_context(worker(
                        own.replace(openai_base_url=model.base_url,
                                    part_cases=part_cases),
                        max_evaluations=1))
                created = await create_evaluation(stack, test_set["id"],
                                                  concurrency=2)
                evaluation = await stack.wait_for_status(created["id"],
                                                         "COMPLETED")

    calls = [len(model.calls) for model in models]
    asked = [{call.prompt for call in model.calls} for model in models]
    assert all(count >= 10 for count in calls), f"a worker did nothing: {calls}"
    # No case was asked by two workers; all were asked. (The client may ask
    # again within one call, after a connection error: that is not counted.)
    assert sum(len(prompts) for prompts in asked) == 150, calls
    assert evaluation["completedCases"] == 150
    # One result per case; one event per result plus two status changes.
    assert await _stored(pool, created["id"]) == (150, 150, 152)


async def test_a_helper_that_dies_mid_part_leaves_its_part_to_the_lead(
        settings, pool):
    own = settings.replace(redis_prefix=f"{settings.redis_prefix}-parts-die",
                           **PARTS_OF_TEN)
    async with fake_model() as lead_model, fake_model() as helper_model:
        lead_model.latency_s = helper_model.latency_s = 0.05
        async with running_stack(own, with_worker=False) as stack:
            test_set = await create_test_set(stack, arithmetic_cases(60))
            # The lead's worker runs one job at a time, so the helper jobs
            # wait for the helper's worker, started once the lead runs.
            async with worker(own.replace(openai_base_url=lead_model.base_url),
                              max_evaluations=1):
                created = await create_evaluation(stack, test_set["id"],
                                                  concurrency=2)
                while not lead_model.calls:
                    await asyncio.sleep(0.01)
                helper = asyncio.create_task(_run_worker_until_cancelled(
                    own.replace(openai_base_url=helper_model.base_url)))
                while len(helper_model.calls) < 5:
                    await asyncio.sleep(0.01)
                helper.cancel()  # its lock connection goes, as in a crash
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
                evaluation = await stack.wait_for_status(created["id"],
                                                         "COMPLETED")

    assert evaluation["completedCases"] == 60 and evaluation["failedCases"] == 0
    assert await _stored(pool, created["id"]) == (60, 60, 62)
    assert len(lead_model.calls) > 0 and len(helper_model.calls) >= 5
    # Asked again: at most the calls the helper had in flight when it died.
    asked_twice = ({c.prompt for c in lead_model.calls}
                   & {c.prompt for c in helper_model.calls})
    assert len(asked_twice) <= 2


async def test_the_lock_connection_serves_the_feeder_and_the_watcher_at_once(
        settings):
    async with (run_locks.part_locks(settings.database_url, 987_654) as lock,
                run_locks.part_locks(settings.database_url, 987_654) as other):
        taken = await asyncio.gather(*(lock.take_part(part) for part in range(20)),
                                     *(lock.still_held() for _ in range(20)))
        refused = await other.take_part(3)
        await lock.release_part(3)
        after_release = await other.take_part(3)

    assert all(taken)
    assert not refused and after_release


async def _run_worker_until_cancelled(settings) -> None:
    async with worker(settings):
        await asyncio.Event().wait()


def test_a_small_evaluation_is_cut_small_enough_for_every_worker_to_share():
    def part_size(total_cases: int, part_cases: int = 200) -> int:
        job = JobContext(pool=None, redis=None, redis_prefix="",
                         model_client=None, database_url="",
                         part_cases=part_cases, workers_per_evaluation=4)
        return job.part_size(total_cases)

    assert part_size(100_000) == 200
    assert part_size(2_000) == 63  # 32 parts: 8 for each of 4 workers
    assert part_size(100) == 25  # the floor
    assert part_size(2_000, part_cases=10) == 10  # never above the setting
    alone = JobContext(pool=None, redis=None, redis_prefix="", model_client=None,
                       database_url="", part_cases=200, workers_per_evaluation=1)
    assert alone.part_size(2_000) == 200  # nobody to share with


async def test_the_first_lead_settles_the_part_size_for_every_attempt(stack, pool):
    from app.store import evaluations as evaluation_store

    test_set = await create_test_set(stack, arithmetic_cases(3))
    created = await create_evaluation(stack, test_set["id"])
    row_id = int(created["id"].removeprefix("ev_"))

    first = await evaluation_store.settle_part_size(pool, row_id, 25)
    # A later lead (another attempt, a worker with other settings) gets the
    # first size, not its own.
    later = await evaluation_store.settle_part_size(pool, row_id, 500)
    stored = await evaluation_store.get_evaluation(pool, row_id)

    assert (first, later, stored.part_cases) == (25, 25, 25)
