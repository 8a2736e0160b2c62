"""API keys: made at random, shown once, kept as digests, checked in constant
time.

A key is `assay_` and 43 URL-safe characters (256 random bits). Only its
SHA-256 digest is stored, with its first characters for telling keys apart
in listings.

The API does not check keys yet: until it does, they are made and managed
(`assay keys`) but every request acts on everything.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import secrets

import asyncpg

from app.store import api_keys as key_store
from app.store.api_keys import ApiKeyRow

KEY_PREFIX = "assay_"
ROLES = ("viewer", "editor", "admin")
# Shown in listings: the prefix and the first few random characters.
_SHOWN_CHARS = len(KEY_PREFIX) + 6


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a request acts for: a workspace and a role in it."""

    workspace_id: int
    workspace: str
    role: str
    key_id: int


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


async def create_key(pool: asyncpg.Pool, workspace: str, role: str, *,
                     name: str | None = None,
                     expires_at: datetime.datetime | None = None,
                     ) -> tuple[ApiKeyRow, str]:
    """A new key for a workspace (created if need be); the stored row and the
    key itself, which nothing keeps."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await key_store.create_key(pool, workspace, role, name, digest(key),
                                     key[:_SHOWN_CHARS], expires_at)
    return row, key


async def authenticate(pool: asyncpg.Pool, presented: str) -> Caller | None:
    """The caller a presented key acts for; None for a key that is unknown,
    revoked or expired."""
    presented_digest = digest(presented)
    found = await key_store.key_by_digest(pool, presented_digest)
    if found is None:
        return None
    row, stored_digest = found
    if not hmac.compare_digest(stored_digest, presented_digest):
        return None
    if row.status(datetime.datetime.now(datetime.UTC)) != "active":
        return None
    return Caller(workspace_id=row.workspace_id, workspace=row.workspace,
                  role=row.role, key_id=row.id)
