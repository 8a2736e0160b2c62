"""Worker memory: peak RSS of one worker over evaluations of growing size.

The worker holds a bounded window of cases whatever the size of the test
set, so its peak must not grow with the number of cases beyond a small
constant. Each size runs on a fresh worker process, against the simulator
with no latency.

    .venv/bin/python bench/memory.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.store import db  # noqa: E402
from bench.common import (  # noqa: E402
    arithmetic_test_set,
    env_for,
    free_port,
    peak_rss_mb,
    report,
    seconds_to_complete,
    start,
    stop,
    throwaway_settings,
    wait_for_http,
    workers_running,
)


async def run(quick: bool) -> dict[str, float]:
    small, large = (1_000, 10_000) if quick else (1_000, 100_000)
    figures = {}
    async with throwaway_settings() as settings:
        for size in (small, large):
            peak_mb, per_s = await _one_run(settings, size)
            report(f"worker peak RSS, {size:,} cases", peak_mb, "MB")
            report(f"  results/s at {size:,} cases", per_s, "/s")
            figures[_key(size)] = round(peak_mb, 1)
    growth = figures[_key(large)] - figures[_key(small)]
    report("growth from the small to the large", growth, "MB",
           target="a small constant")
    return figures


def _key(size: int) -> str:
    return f"worker_rss_mb_{size // 1000}k"


async def _one_run(settings, size: int) -> tuple[float, float]:
    """A fresh worker's peak RSS over an evaluation of `size` cases, and its
    results per second."""
    port = free_port()
    env = env_for(settings, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
    pool = await db.create_pool(settings)
    simulator = start(["simulator", "--port", str(port), "--accuracy", "0.9"], env)
    try:
        test_set_id = await arithmetic_test_set(pool, size)
        await wait_for_http(f"http://127.0.0.1:{port}/v1/models")
        async with workers_running(settings, env) as [worker]:
            seconds = await seconds_to_complete(pool, settings, test_set_id,
                                                concurrency=32)
            return peak_rss_mb(worker.pid), size / seconds
    finally:
        stop(simulator)
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(asyncio.run(run(parser.parse_args().quick)))
