"""Shared rate limit: the request rate a fleet of workers keeps to on one
model endpoint, against the limit set (ASSAY_MODEL_RPM).

Two workers run two evaluations at once against the simulator with no
latency, so without the limit they would call it as fast as they can. The
rate is measured from the results stored per second, once the first
second's burst is past.

    .venv/bin/python bench/rate_limit.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.store import db  # noqa: E402
from bench.common import (  # noqa: E402
    arithmetic_test_set,
    env_for,
    free_port,
    queue_evaluation,
    report,
    start,
    stop,
    throwaway_settings,
    wait_for_http,
    workers_running,
)

WORKERS = 2


async def run(quick: bool) -> dict[str, float]:
    rpm, window_s = (1200, 10.0) if quick else (3000, 30.0)
    async with throwaway_settings() as settings:
        port = free_port()
        env = env_for(settings, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
                      ASSAY_MODEL_RPM=str(rpm))
        pool = await db.create_pool(settings)
        simulator = start(["simulator", "--port", str(port)], env)
        try:
            await wait_for_http(f"http://127.0.0.1:{port}/v1/models")
            # Enough cases that no run ends inside the window.
            size = int(rpm / 60 * (window_s + 5))
            async with workers_running(settings, env, WORKERS):
                evaluation_ids = [await queue_evaluation(
                    pool, settings, await arithmetic_test_set(pool, size), 16)
                    for _ in range(WORKERS)]
                await asyncio.sleep(2.0)  # past the burst allowed at first
                before = await _results(pool, evaluation_ids)
                started = time.perf_counter()
                await asyncio.sleep(window_s)
                after = await _results(pool, evaluation_ids)
                ended = time.perf_counter()
        finally:
            stop(simulator)
            await pool.close()

    observed = (after - before) / (ended - started) * 60
    report("requests a minute observed", observed, "/min", ceiling=rpm,
           ceiling_name="limit set", target="at most the limit, and close to it")
    return {"rate_limit_rpm_set": rpm, "rate_limit_rpm_observed": round(observed, 1)}


async def _results(pool, evaluation_ids: list[int]) -> int:
    return await pool.fetchval(
        "SELECT coalesce(sum(completed_cases), 0) FROM evaluations"
        " WHERE id = any($1::bigint[])", evaluation_ids)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(asyncio.run(run(parser.parse_args().quick)))
