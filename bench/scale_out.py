"""Scale-out: wall time of one evaluation run by 1, 2 and 4 worker processes.

Each count of workers runs a fresh evaluation of the same test set against
the simulator at 100 ms a call, with the default concurrency (8 calls at a
time), timed from enqueueing it to its COMPLETED status. The workers share
one database and one queue, and all of them are polling the queue before the
evaluation is enqueued.

The evaluation is split into parts (32 of 63 cases, or with --quick 16 of 25:
a part is cut smaller than ASSAY_PART_CASES so that each of the four workers
that may share it gets about eight) and the worker that takes it queues
helper jobs for the others. The workers, the simulator and PostgreSQL share
this machine's cores: where those run out, more workers add little.

    .venv/bin/python bench/scale_out.py [--quick]
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
    report,
    seconds_to_complete,
    start,
    stop,
    throwaway_settings,
    wait_for_http,
    workers_running,
)

WORKER_COUNTS = (1, 2, 4)
LATENCY_MS = 100


async def run(quick: bool) -> dict[str, float]:
    num_cases = 400 if quick else 2_000
    seconds: dict[int, float] = {}
    async with throwaway_settings() as settings:
        port = free_port()
        env = env_for(settings, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
        pool = await db.create_pool(settings)
        simulator = None
        try:
            test_set_id = await arithmetic_test_set(pool, num_cases)
            simulator = start(["simulator", "--port", str(port),
                               "--latency-ms", str(LATENCY_MS)], env)
            await wait_for_http(f"http://127.0.0.1:{port}/v1/models")

            for count in WORKER_COUNTS:
                async with workers_running(settings, env, count):
                    seconds[count] = await seconds_to_complete(
                        pool, settings, test_set_id, settings.default_concurrency)
                report(f"{num_cases:,} cases on {_workers(count)}",
                       seconds[count], "s")
        finally:
            if simulator is not None:
                stop(simulator)
            await pool.close()

    speedup = seconds[1] / seconds[4]
    report("speed-up on 4 workers", speedup, "x", target="at least 3x on 4 workers")
    figures = {f"scale_out_seconds_{_workers(count).replace(' ', '_')}":
               round(seconds[count], 2) for count in WORKER_COUNTS}
    figures["scale_out_speedup_4"] = round(speedup, 2)
    return figures


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(asyncio.run(run(parser.parse_args().quick)))
