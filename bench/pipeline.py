"""Pipeline throughput: results per second of one worker, against bare calls.

One `assay worker` runs an evaluation against the simulator with no latency,
timed from enqueueing it to its COMPLETED status; the worker is already
polling the queue by then, so its start-up is not counted. The ceiling is what one
other process does when all it does is ask the same simulator the same
prompts through Assay's own model client, with the same settings and
concurrency, and stores and announces nothing. It is measured just before
and just after the worker's run and the higher of the two is kept, so that
the load of other programs on the machine lowers the ratio rather than
flattering it.

    .venv/bin/python bench/pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.llm.client import CallOptions, ModelClient  # noqa: E402
from app.llm.simulator import MODEL_ID  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store import db  # noqa: E402
from app.templates import compile_template  # noqa: E402
from bench.common import (  # noqa: E402
    PROMPT_TEMPLATE,
    REPO,
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

CONCURRENCY = 32


async def run(quick: bool) -> dict[str, float]:
    num_cases = 2_000 if quick else 10_000
    async with throwaway_settings() as settings:
        port = free_port()
        env = env_for(settings, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
        pool = await db.create_pool(settings)
        simulator = None
        try:
            test_set_id = await arithmetic_test_set(pool, num_cases)
            simulator = start(["simulator", "--port", str(port),
                               "--latency-ms", "0"], env)
            await wait_for_http(f"http://127.0.0.1:{port}/v1/models")

            ceilings = [_ceiling_per_s(env, test_set_id)]
            async with workers_running(settings, env):
                seconds = await seconds_to_complete(pool, settings, test_set_id,
                                                    CONCURRENCY)
            ceilings.append(_ceiling_per_s(env, test_set_id))
        finally:
            if simulator is not None:
                stop(simulator)
            await pool.close()

    per_s, ceiling = num_cases / seconds, max(ceilings)
    report(f"results/s of one worker, {num_cases:,} cases", per_s, "/s",
           ceiling=ceiling, ceiling_name="bare calls",
           target="at least 0.8 of the ceiling and 750/s")
    return {"pipeline_results_per_s": round(per_s, 1),
            "pipeline_ceiling_per_s": round(ceiling, 1),
            "pipeline_ratio": round(per_s / ceiling, 3)}


def _ceiling_per_s(env: dict[str, str], test_set_id: int) -> float:
    """Bare calls per second, measured by a child process of its own."""
    child = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--ceiling", str(test_set_id)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True,
        timeout=600)
    return float(child.stdout.split()[-1])


async def _call_only(test_set_id: int) -> float:
    """In the child: ask the model every case's prompt, `CONCURRENCY` calls at
    a time, and nothing else; calls per second."""
    settings = Settings.from_env()
    pool = await db.create_pool(settings)
    try:
        inputs = await pool.fetch("SELECT input FROM test_cases"
                                  " WHERE test_set_id = $1 ORDER BY position",
                                  test_set_id)
    finally:
        await pool.close()
    template = compile_template(PROMPT_TEMPLATE)
    prompts = iter([template.render(row["input"]) for row in inputs])
    client = ModelClient.from_settings(settings, settings.model_base_url)
    options = CallOptions(model=MODEL_ID)

    async def caller() -> None:
        # One iterator shared by every caller: each prompt is asked once.
        for prompt in prompts:
            await client.complete(prompt, options)

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(CONCURRENCY):
                group.create_task(caller())
    finally:
        await client.close()
    return len(inputs) / (time.perf_counter() - started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ceiling", type=int, metavar="TEST_SET_ID",
                        help="measure only the bare-call ceiling (run by run())")
    args = parser.parse_args()
    if args.ceiling is not None:
        print(asyncio.run(_call_only(args.ceiling)))
    else:
        print(asyncio.run(run(args.quick)))
