"""Import: test cases/s through `assay import`, next to COPY of the same rows.

`assay import` runs as a user runs it: a child process reading a generated
JSON Lines file and sending it in batches to `assay serve`, timed from its
start to its exit (start-up and the checking pass over the file included;
the start-up alone is reported beside it). The ceiling is the database
alone: one COPY of the same rows into `test_cases`, in the same run.

    .venv/bin/python bench/import_copy.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from app.settings import Settings  # noqa: E402
from app.store import db  # noqa: E402
from app.store import test_sets as test_set_store  # noqa: E402
from bench.common import (  # noqa: E402
    ASSAY,
    REPO,
    api_key,
    env_for,
    free_port,
    report,
    start,
    stop,
    throwaway_settings,
    wait_for_http,
    workspace_id,
)

COPY_COLUMNS = ["test_set_id", "position", "input", "expected_output"]


async def run(quick: bool) -> dict[str, float]:
    num_cases = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="assay-bench-import-") as folder:
        path = Path(folder) / "cases.jsonl"
        rows = _write_cases(path, num_cases)
        async with throwaway_settings() as settings:
            pool = await db.create_pool(settings)
            try:
                key = await api_key(pool)
                startup_s = await _importer_startup_s(
                    settings, key, path.with_name("missing.jsonl"))
                import_s = await _import_through_api(settings, pool, key, path,
                                                     num_cases)
                copy_s = await _copy(settings, pool, rows)
            finally:
                await pool.close()

    import_per_s, copy_per_s = num_cases / import_s, num_cases / copy_s
    report(f"assay import, {num_cases:,} cases", import_per_s, "cases/s",
           ceiling=copy_per_s, ceiling_name="COPY", target="at least 0.5 of COPY")
    report("  of which the command's start-up", startup_s, "s")
    return {"import_cases_per_s": round(import_per_s, 1),
            "import_copy_rows_per_s": round(copy_per_s, 1),
            "import_ratio": round(import_per_s / copy_per_s, 3),
            "import_startup_s": round(startup_s, 2)}


def _write_cases(path: Path, num_cases: int) -> list[tuple[str, str]]:
    """A JSON Lines file of questions and answers; the (input as JSON text,
    expected output) that `assay import` makes of each line."""
    rows = []
    with path.open("w", encoding="utf-8") as file:
        for i in range(num_cases):
            question = (f"Tom has {i} apples and buys {i + 1} more. How many"
                        " apples does he have? Answer with the number only.")
            answer = str(2 * i + 1)
            file.write(json.dumps({"question": question, "answer": answer}) + "\n")
            rows.append((json.dumps({"question": question}), answer))
    return rows


async def _importer_startup_s(settings: Settings, key: str,
                              missing: Path) -> float:
    """How long `assay import` takes to start and stop: given a file that does
    not exist, it fails as soon as its modules are loaded."""
    started_s = time.perf_counter()
    await _assay(["import", str(missing), "--name", "nothing"],
                 env_for(settings, ASSAY_API_KEY=key), expect_failure=True)
    return time.perf_counter() - started_s


async def _import_through_api(settings: Settings, pool: asyncpg.Pool, key: str,
                              path: Path, num_cases: int) -> float:
    """Seconds `assay import` takes for the file; checks every case arrived."""
    name = f"bench import {uuid.uuid4().hex[:6]}"
    port = free_port()
    server = start(["serve", "--port", str(port)], env_for(settings))
    try:
        await wait_for_http(f"http://127.0.0.1:{port}/healthz")
        started_s = time.perf_counter()
        await _assay(["import", str(path), "--name", name,
                      "--url", f"http://127.0.0.1:{port}/graphql"],
                     env_for(settings, ASSAY_API_KEY=key))
        elapsed_s = time.perf_counter() - started_s
    finally:
        stop(server)

    await _check_stored(pool, "name = $1", name, num_cases)
    return elapsed_s


async def _copy(settings: Settings, pool: asyncpg.Pool,
                rows: list[tuple[str, str]]) -> float:
    """Seconds one COPY of `rows` into a new test set takes."""
    test_set, _ = await test_set_store.create_test_set(
        pool, await workspace_id(pool), f"bench copy {uuid.uuid4().hex[:6]}",
        None, [], [])
    records = [(test_set.id, position, input_json, expected_output)
               for position, (input_json, expected_output) in enumerate(rows)]

    # Not the pool: its jsonb codec would encode the JSON text once more, into
    # a JSON string. asyncpg's own codec takes the text as it is.
    conn = await asyncpg.connect(settings.database_url)
    try:
        started_s = time.perf_counter()
        await conn.copy_records_to_table("test_cases", records=records,
                                         columns=COPY_COLUMNS)
        elapsed_s = time.perf_counter() - started_s
    finally:
        await conn.close()

    await _check_stored(pool, "id = $1", test_set.id, len(rows))
    return elapsed_s


async def _check_stored(pool: asyncpg.Pool, where: str, value: object,
                        num_cases: int) -> None:
    """Fails unless the test set holds `num_cases` cases: a fast import that
    lost some must not pass (the table refuses an input that is not a JSON
    object)."""
    stored = await pool.fetchval(
        "SELECT count(*) FROM test_cases"
        f" WHERE test_set_id = (SELECT id FROM test_sets WHERE {where})", value)
    if stored != num_cases:
        raise AssertionError(f"{stored:,} of {num_cases:,} cases stored")


async def _assay(args: list[str], env: dict[str, str], *,
                 expect_failure: bool = False) -> None:
    """Run an `assay` command to its end, its output kept out of the report."""
    process = await asyncio.create_subprocess_exec(
        *ASSAY, *args, env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, stderr = await process.communicate()
    if (process.returncode != 0) != expect_failure:
        raise RuntimeError(f"assay {args[0]} exited with {process.returncode}:"
                           f" {stderr.decode(errors='replace')[-500:]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(asyncio.run(run(parser.parse_args().quick)))
