"""Which evaluations are being run right now, by any worker anywhere.

A worker holds a PostgreSQL advisory lock on a connection of its own for as
long as it runs an evaluation. The lock lives exactly as long as that
connection: if the worker dies, even by SIGKILL, PostgreSQL drops the
connection and the lock with it. So "the lock is free" means "nobody is
running this evaluation", with no heartbeat to tune.

An evaluation is run in parts of consecutive test cases, and a worker holds
a lock on each part it runs as well (on the same connection, until its run
ends), so that several workers can share one evaluation and no two ever call
the model for the same part. A part lock is keyed by the evaluation id's
lowest 31 bits and the part's number: evaluations two billion ids apart
would share part locks, which could only make one wait for the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg


def _lock_key(evaluation_id: int) -> int:
    # Negative keys keep clear of the (positive) key `assay migrate` uses.
    return -evaluation_id


class RunLock:
    """A held (or not) run lock, and a way to tell that it still is."""

    def __init__(self, conn: asyncpg.Connection, held: bool,
                 evaluation_id: int) -> None:
        self._conn = conn
        self.held = held
        self._evaluation_key = evaluation_id & 0x7FFFFFFF
        # The run's feeder and its watcher both use the connection, which
        # takes one query at a time.
        self._using = asyncio.Lock()

    async def take_part(self, part: int) -> bool:
        """Take the lock of one part of the evaluation if nobody holds it."""
        async with self._using:
            return await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1::int4, $2::int4)",
                self._evaluation_key, part)

    async def release_part(self, part: int) -> None:
        """Let go of a part whose cases all have a result: the server's lock
        table is shared and bounded, and a large run has thousands of parts."""
        async with self._using:
            await self._conn.fetchval(
                "SELECT pg_advisory_unlock($1::int4, $2::int4)",
                self._evaluation_key, part)

    async def still_held(self) -> bool:
        """False once the lock's connection is gone, and with it the lock:
        another worker may then take the run over, so this one must stop."""
        if not self.held:
            return False
        try:
            async with self._using:
                await self._conn.fetchval("SELECT 1", timeout=5)
        except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                asyncpg.PostgresError):
            return False
        return True


@contextlib.asynccontextmanager
async def run_lock(database_url: str, evaluation_id: int, *,
                   wait_s: float = 0.0) -> AsyncIterator[RunLock]:
    """Try to take the evaluation's run lock, for up to `wait_s`; yields the
    lock (`.held` says whether it was taken), released on leaving."""
    conn = await asyncpg.connect(
        database_url, server_settings={"application_name": "assay-run-lock"})
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while not (held := await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", _lock_key(evaluation_id))):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.1)
        yield RunLock(conn, held, evaluation_id)
    finally:
        # Closing the connection releases the lock.
        await conn.close()


@contextlib.asynccontextmanager
async def part_locks(database_url: str, evaluation_id: int) -> AsyncIterator[RunLock]:
    """A connection to hold the locks of the parts a helping worker runs,
    without the evaluation's run lock (its lead holds that)."""
    conn = await asyncpg.connect(
        database_url, server_settings={"application_name": "assay-run-lock"})
    try:
        yield RunLock(conn, True, evaluation_id)
    finally:
        await conn.close()
