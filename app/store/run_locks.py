"""Which evaluations are being run right now, by any worker anywhere.

A worker holds a PostgreSQL advisory lock on a connection of its own for as
long as it runs an evaluation. The lock lives exactly as long as that
connection: if the worker dies, even by SIGKILL, PostgreSQL drops the
connection and the lock with it. So "the lock is free" means "nobody is
running this evaluation", with no heartbeat to tune.
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

    def __init__(self, conn: asyncpg.Connection, held: bool) -> None:
        self._conn = conn
        self.held = held

    async def still_held(self) -> bool:
        """False once the lock's connection is gone, and with it the lock:
        another worker may then take the run over, so this one must stop."""
        if not self.held:
            return False
        try:
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
        yield RunLock(conn, held)
    finally:
        # Closing the connection releases the lock.
        await conn.close()
