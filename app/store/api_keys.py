"""SQL for workspaces and their API keys."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

import asyncpg


@dataclasses.dataclass(frozen=True)
class ApiKeyRow:
    id: int
    workspace_id: int
    workspace: str
    name: str | None
    role: str
    key_start: str
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    revoked_at: datetime.datetime | None

    def status(self, now: datetime.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


_COLUMNS = ("k.id, k.workspace_id, w.name AS workspace, k.name, k.role, k.key_start,"
            " k.created_at, k.expires_at, k.revoked_at")


def _row(record: asyncpg.Record) -> ApiKeyRow:
    return ApiKeyRow(**{field.name: record[field.name]
                        for field in dataclasses.fields(ApiKeyRow)})


async def ensure_workspace(db: asyncpg.Pool | asyncpg.Connection, name: str) -> int:
    """The id of the workspace with this name, created if need be."""
    return await db.fetchval(
        "INSERT INTO workspaces (name) VALUES ($1)"
        " ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
        name)


async def create_key(pool: asyncpg.Pool, workspace: str, role: str, name: str | None,
                     key_digest: str, key_start: str,
                     expires_at: datetime.datetime | None) -> ApiKeyRow:
    """Store a key's digest in a workspace, creating the workspace if need be."""
    async with pool.acquire() as conn, conn.transaction():
        workspace_id = await ensure_workspace(conn, workspace)
        key_id = await conn.fetchval(
            "INSERT INTO api_keys (workspace_id, name, role, key_digest, key_start,"
            "   expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            workspace_id, name, role, key_digest, key_start, expires_at)
        return await key_by_id(conn, key_id)


async def list_keys(pool: asyncpg.Pool, workspace: str | None = None, *,
                    workspace_id: int | None = None) -> Sequence[ApiKeyRow]:
    """Keys of the workspace named or with this id; of all with neither."""
    records = await pool.fetch(
        f"SELECT {_COLUMNS} FROM api_keys k JOIN workspaces w"
        " ON w.id = k.workspace_id WHERE ($1::text IS NULL OR w.name = $1)"
        "   AND ($2::bigint IS NULL OR w.id = $2)"
        " ORDER BY w.name, k.id", workspace, workspace_id)
    return [_row(r) for r in records]


async def revoke_key(pool: asyncpg.Pool, key_id: int, *,
                     workspace_id: int | None = None) -> ApiKeyRow | None:
    """Revoke a key (once: a second revoke keeps the first time); None if
    there is no such key (in the workspace, when one is given)."""
    record = await pool.fetchrow(
        "WITH revoked AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at,"
        "   now()) WHERE id = $1 AND ($2::bigint IS NULL OR workspace_id = $2)"
        "   RETURNING *)"
        f" SELECT {_COLUMNS} FROM revoked k JOIN workspaces w"
        " ON w.id = k.workspace_id", key_id, workspace_id)
    return _row(record) if record else None


async def no_longer_valid(pool: asyncpg.Pool, key_ids: Sequence[int]) -> list[int]:
    """Those of the keys that have been revoked, have expired or are gone."""
    return [r["id"] for r in await pool.fetch(
        "SELECT given.id FROM unnest($1::bigint[]) AS given(id)"
        " LEFT JOIN api_keys k ON k.id = given.id"
        " WHERE k.id IS NULL OR k.revoked_at IS NOT NULL"
        "   OR k.expires_at <= now()", list(key_ids))]


async def key_by_digest(pool: asyncpg.Pool,
                        key_digest: str) -> tuple[ApiKeyRow, str] | None:
    """The key with this digest, and the digest as stored."""
    record = await pool.fetchrow(
        f"SELECT {_COLUMNS}, k.key_digest FROM api_keys k JOIN workspaces w"
        " ON w.id = k.workspace_id WHERE k.key_digest = $1", key_digest)
    return (_row(record), record["key_digest"]) if record else None


async def key_by_id(db: asyncpg.Pool | asyncpg.Connection,
                    key_id: int) -> ApiKeyRow | None:
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys k JOIN workspaces w"
        " ON w.id = k.workspace_id WHERE k.id = $1", key_id)
    return _row(record) if record else None
