"""Idempotency keys: a retried create returns what the first one created.

A create claims its key inside its own transaction before it creates
anything. A second request with the same key blocks on that claim until the
first commits (then finds what it created) or rolls back (then goes ahead
itself), so two racing retries can never both create.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import asyncpg

from app.errors import Conflict


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    # Keys are a workspace's own: two teams may pick the same key.
    workspace_id: int
    operation: str  # "createTestSet" or "createEvaluation"
    key: str
    request_digest: str
    ttl_hours: float

    @classmethod
    def for_request(cls, workspace_id: int, operation: str, key: str,
                    request: Any, ttl_hours: float) -> IdempotencyKey:
        """`request` is the input as plain data, without the key itself."""
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False, default=str)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass"))
        return cls(workspace_id, operation, key, digest.hexdigest(), ttl_hours)


async def claim(conn: asyncpg.Connection, key: IdempotencyKey) -> int | None:
    """Inside the caller's transaction: None if this request is the first with
    its key (which it now holds), else the id of what the first one created.
    Raises Conflict if the key was used for a different request."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE operation = $1 AND key = $2"
        "   AND workspace_id = $4"
        "   AND created_at < now() - make_interval(secs => $3)",
        key.operation, key.key, key.ttl_hours * 3600, key.workspace_id)
    claimed = await conn.fetchval(
        "INSERT INTO idempotency_keys (operation, key, request_digest,"
        "   workspace_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
        key.operation, key.key, key.request_digest, key.workspace_id)
    if claimed:
        return None

    earlier = await conn.fetchrow(
        "SELECT request_digest, coalesce(test_set_id, evaluation_id) AS object_id"
        " FROM idempotency_keys WHERE operation = $1 AND key = $2"
        "   AND workspace_id = $3",
        key.operation, key.key, key.workspace_id)
    if earlier is None:
        # What it created was deleted in the meantime, and the key with it.
        return await claim(conn, key)
    if earlier["request_digest"] != key.request_digest:
        raise Conflict(
            f"input.idempotencyKey: this key was used for a different"
            f" {key.operation} request in the last {key.ttl_hours:g} hours")
    return earlier["object_id"]


async def remember(conn: asyncpg.Connection, key: IdempotencyKey, *,
                   test_set_id: int | None = None,
                   evaluation_id: int | None = None) -> None:
    """Record what the request holding `key` created, in its transaction."""
    await conn.execute(
        "UPDATE idempotency_keys SET test_set_id = $3, evaluation_id = $4"
        " WHERE operation = $1 AND key = $2 AND workspace_id = $5",
        key.operation, key.key, test_set_id, evaluation_id, key.workspace_id)


async def delete_expired(pool: asyncpg.Pool, ttl_hours: float) -> int:
    """Forget keys older than `ttl_hours`; how many there were."""
    result = await pool.execute(
        "DELETE FROM idempotency_keys"
        " WHERE created_at < now() - make_interval(secs => $1)",
        ttl_hours * 3600)
    return int(result.split()[-1])
