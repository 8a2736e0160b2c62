"""Worker throughput and peak memory over evaluations of growing size.

Runs the real processes (`assay simulator`, `assay worker`) against a
throwaway database and Redis prefix, evaluates test sets of each size, and
prints results per second and the worker's peak RSS. The peak should not grow
with the number of cases: the worker holds a bounded window of them.

    .venv/bin/python bench/worker_memory.py [--sizes 1000,20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.jobs import queue  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store import db, evaluations  # noqa: E402
from app.store import test_sets as test_set_store  # noqa: E402
from app.store.rows import NewTestCase  # noqa: E402

ADMIN_URL = os.environ.get("ASSAY_BENCH_DATABASE_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def run_once(size: int, base_env: dict[str, str], settings: Settings) -> None:
    port = free_port()
    env = {**base_env, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    pool = await db.create_pool(settings)
    test_set, _ = await test_set_store.create_test_set(
        pool, f"bench {size} {uuid.uuid4().hex[:6]}", None, [],
        [NewTestCase(input={"question": f"What is {i} plus {i + 1}?"},
                     expected_output=str(2 * i + 1),
                     category=f"group {i % 5}") for i in range(size)])

    assay = [sys.executable, "-m", "app.cli", "--log-level", "WARNING"]
    simulator = subprocess.Popen([*assay, "simulator", "--port", str(port),
                                  "--accuracy", "0.9"], env=env, cwd=REPO)
    worker = subprocess.Popen([*assay, "worker"], env=env, cwd=REPO)
    try:
        async with httpx2.AsyncClient() as http:
            for _ in range(200):
                try:
                    await http.get(f"http://127.0.0.1:{port}/v1/models")
                    break
                except httpx2.HTTPError:
                    await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        baseline_mb = peak_rss_mb(worker.pid)

        new = evaluations.NewEvaluation(
            test_set_id=test_set.id, name=None, model="assay-simulator",
            prompt_template="{{ question }}", system_prompt=None, temperature=None,
            max_tokens=None, scorer_type="NUMERIC", scorer_options={},
            concurrency=32)
        evaluation, _ = await evaluations.create_evaluation(pool, new)
        arq = await queue.connect(settings.redis_url)
        started = time.perf_counter()
        await queue.enqueue_evaluation(arq, settings.redis_prefix, evaluation.id, 1)
        while (row := await evaluations.get_evaluation(pool, evaluation.id)
               ).status not in ("COMPLETED", "FAILED"):
            await asyncio.sleep(0.1)
        elapsed_s = time.perf_counter() - started
        await arq.aclose()

        print(f"{size:>8} cases: {row.status}, {size / elapsed_s:8.0f} results/s,"
              f" worker RSS {baseline_mb:6.1f} MB idle, {peak_rss_mb(worker.pid):6.1f}"
              " MB peak")
    finally:
        for process in (worker, simulator):
            process.terminate()
            process.wait(timeout=30)
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000")
    args = parser.parse_args()

    name = f"assay_bench_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    prefix = f"assay-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=url, redis_prefix=prefix)
    await db.migrate(settings)
    env = {**os.environ, "DATABASE_URL": url, "ASSAY_REDIS_PREFIX": prefix}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            await run_once(size, env, settings)
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
