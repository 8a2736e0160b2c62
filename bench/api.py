"""API: an evaluation's page and a small query under concurrent clients.

Results are stored through the store (no worker, no model); then 16 client
loops, each on a keep-alive connection of its own, send one request for a
fixed time to `assay serve`. The page is what a front end shows for an
evaluation; the small query is set beside a plain Starlette app giving the
same JSON, the most one uvicorn process could. The SQL a page runs is
counted on an API served in this process.

The clients speak just enough HTTP/1.1 to send prepared bytes: httpx2 spends
about a millisecond of CPU per request, and on this 2-core machine held the
plain app to a fifth of its rate. As the client CPU share nears 100%, a rate
says as much about the client as about the server.

    .venv/bin/python bench/api.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from app import ids  # noqa: E402
from app.server import create_app  # noqa: E402
from app.store import db  # noqa: E402
from app.store import evaluations as evaluation_store  # noqa: E402
from app.store.rows import NewResult  # noqa: E402
from bench import common  # noqa: E402

NUM_CLIENTS = 16
PAGE_QUERY = """query Page($id: ID!, $first: Int!) {
  evaluation(id: $id) {
    status score passRate completedCases totalCases
    categoryScores { category { name } score passRate }
    results(first: $first) { edges { node { output score passed
      testCase { input expectedOutput category { name } } } } }
  }
}"""
SMALL_QUERY = {"query": "{ me { workspace } }"}
# What asyncpg runs on a new connection to learn types and turn off JIT.
_INTROSPECTION = re.compile(r"typeinfo_tree|'jit'|\bpg_catalog\.")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


class Load(NamedTuple):
    rps: float
    p99_ms: float
    client_cpu_share: float


async def run(quick: bool) -> dict[str, float]:
    num_results, duration_s = (2_000, 3.0) if quick else (10_000, 10.0)
    async with common.throwaway_settings() as settings:
        pool = await db.create_pool(settings)
        try:
            key = await common.api_key(pool)
            evaluation_id = await _stored_evaluation(pool, num_results)
        finally:
            await pool.close()
        fresh, cached = await _statements_by_page_size(settings, key, evaluation_id)

        page_query = {"query": PAGE_QUERY,
                      "variables": {"id": evaluation_id, "first": 100}}
        port = common.free_port()
        server = common.start(["serve", "--port", str(port)],
                              common.env_for(settings))
        try:
            page = await _load(port, key, page_query, duration_s)
            small = await _load(port, key, SMALL_QUERY, duration_s)
        finally:
            common.stop(server)
    plain = await _load_plain_starlette(duration_s)

    common.report(f"evaluation page, 100 of {num_results:,}", page.rps, "req/s")
    common.report("  p99 latency", page.p99_ms, "ms")
    common.report("small query", small.rps, "req/s", ceiling=plain.rps,
                  ceiling_name="plain Starlette", target="at least 0.3")
    common.report("  p99 latency", small.p99_ms, "ms")
    for name, load in (("page", page), ("small", small), ("plain", plain)):
        common.report(f"  client CPU, {name}", 100 * load.client_cpu_share, "%")
    return {"api_page_rps": round(page.rps, 1),
            "api_page_p99_ms": round(page.p99_ms, 1),
            "api_page_sql_statements": fresh,
            "api_page_sql_statements_cached": cached,
            "api_small_query_rps": round(small.rps, 1),
            "api_small_query_p99_ms": round(small.p99_ms, 1),
            "api_plain_starlette_rps": round(plain.rps, 1)}


async def _stored_evaluation(pool, num_results: int) -> str:
    """A completed evaluation, nine results in ten passed; its API id."""
    new = evaluation_store.NewEvaluation(
        workspace_id=await common.workspace_id(pool),
        test_set_id=await common.arithmetic_test_set(pool, num_results),
        name="bench api", model="assay-simulator", prompt_template="{{ question }}",
        system_prompt=None, temperature=None, max_tokens=None,
        scorer_type="NUMERIC", scorer_options={}, concurrency=32)
    evaluation, _ = await evaluation_store.create_evaluation(pool, new)

    # store_results keeps the answers of a run in progress only.
    await evaluation_store.change_status(pool, evaluation.id, "IN_PROGRESS",
                                         from_statuses=["QUEUED"])
    position = -1
    while cases := await evaluation_store.cases_without_result(
            pool, evaluation, position, 1_000):
        await evaluation_store.store_results(pool, evaluation.id, [
            NewResult(test_case_id=case.id, position=case.position,
                      output=case.expected_output if case.position % 10 else "0",
                      score=float(case.position % 10 > 0),
                      passed=case.position % 10 > 0, error=None, latency_ms=5,
                      prompt_tokens=12, completion_tokens=3)
            for case in cases])
        position = cases[-1].position
    await evaluation_store.change_status(pool, evaluation.id, "COMPLETED",
                                         from_statuses=["IN_PROGRESS"])
    return ids.encode(ids.Kind.EVALUATION, evaluation.id)


async def _statements_by_page_size(settings, key: str,
                                   evaluation_id: str) -> list[int]:
    """SQL statements a page of 100 runs on a fresh API, then once the API
    has cached its test cases (they never change, so it keeps them); raises
    if a page of 10 runs fewer. Counted in this process, by a query logger."""
    statements: list[str] = []

    def count(record) -> None:
        if not _INTROSPECTION.search(record.query):
            statements.append(record.query)

    counts = {}
    for first in (10, 100):
        page_query = {"query": PAGE_QUERY,
                      "variables": {"id": evaluation_id, "first": first}}
        counts[first] = []
        async with (_serving(create_app(settings, query_logger=count)) as port,
                    _connection(port) as connection):
            for state in ("fresh API", "cases cached"):
                statements.clear()
                await _exchange(*connection, _request(port, key, page_query))
                counts[first].append(len(statements))
                common.report(f"SQL per page of {first}, {state}",
                              len(statements), "")
    if any(large > small for large, small in zip(counts[100], counts[10])):
        raise AssertionError("a page of 100 results runs more SQL statements"
                             f" than a page of 10: {counts}")
    return counts[100]


@contextlib.asynccontextmanager
async def _serving(app) -> AsyncIterator[int]:
    port = common.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the in-process API stopped during start-up")
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await serving


async def _load(port: int, key: str, payload: dict, duration_s: float) -> Load:
    """NUM_CLIENTS loops sending `payload` for `duration_s`, after a warm-up
    in which the server opens its database connections."""
    request = _request(port, key, payload)
    await common.wait_for_http(f"http://127.0.0.1:{port}/healthz")
    await _send_for(port, request, min(1.0, duration_s / 3))

    cpu_started_s, started_s = time.process_time(), time.perf_counter()
    latencies_ms = await _send_for(port, request, duration_s)
    elapsed_s = time.perf_counter() - started_s
    cpu_s = time.process_time() - cpu_started_s
    return Load(len(latencies_ms) / elapsed_s,
                common.percentile(latencies_ms, 99), cpu_s / elapsed_s)


async def _send_for(port: int, request: bytes, duration_s: float) -> list[float]:
    latencies_ms: list[float] = []
    deadline_s = time.perf_counter() + duration_s

    async def client_loop() -> None:
        async with _connection(port) as connection:
            while time.perf_counter() < deadline_s:
                started_s = time.perf_counter()
                await _exchange(*connection, request)
                latencies_ms.append((time.perf_counter() - started_s) * 1000)

    await asyncio.gather(*(client_loop() for _ in range(NUM_CLIENTS)))
    return latencies_ms


def _request(port: int, key: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@contextlib.asynccontextmanager
async def _connection(port: int) -> AsyncIterator[tuple]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    # Both servers give a Content-Length for JSON; a chunked answer is an
    # error here, as are a status other than 200 and a GraphQL error, so
    # that a fast failure never passes for a fast answer.
    length = _CONTENT_LENGTH.search(head)
    body = await reader.readexactly(int(length[1])) if length else b""
    if not head.startswith(b"HTTP/1.1 200 ") or not length or b'"errors"' in body:
        raise RuntimeError(f"the API answered {head[:200]!r} {body[:300]!r}")


async def _load_plain_starlette(duration_s: float) -> Load:
    # On uvicorn's defaults (uvloop, httptools), as `assay serve` runs.
    port = common.free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bench.api:plain_starlette",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"], cwd=common.REPO)
    try:
        return await _load(port, "unused", SMALL_QUERY, duration_s)
    finally:
        common.stop(server)


def plain_starlette() -> Starlette:
    """The small query's answer from one route: no GraphQL, no key check."""

    async def answer(request) -> JSONResponse:
        await request.body()
        return JSONResponse({"data": {"me": {"workspace": common.WORKSPACE}}})

    return Starlette(routes=[Route("/graphql", answer, methods=["POST"])])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(asyncio.run(run(parser.parse_args().quick)))
