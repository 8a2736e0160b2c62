"""API keys: made at random, shown once, kept as digests, checked in constant
time.

A key is `assay_` and 43 URL-safe characters (256 random bits). Only its
SHA-256 digest is stored, with its first characters for telling keys apart
in listings. A key acts in one workspace with one role: viewers read and
follow, editors also create, run, cancel and delete, admins also manage the
workspace's keys.

Keys reach the API as `Authorization: Bearer KEY` on HTTP, and in the
websocket connection_init payload as `{"authorization": "Bearer KEY"}` or
`{"apiKey": "KEY"}`. With authentication turned off (ASSAY_AUTH=off) every
request acts as an admin of the workspace "default".
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import asyncpg

from app.store import api_keys as key_store
from app.store.api_keys import ApiKeyRow

KEY_PREFIX = "assay_"
# In order of what they may do: each role may do all the one before may.
ROLES = ("viewer", "editor", "admin")
VIEWER, EDITOR, ADMIN = ROLES
DEFAULT_WORKSPACE = "default"
# Shown in listings: the prefix and the first few random characters.
_SHOWN_CHARS = len(KEY_PREFIX) + 6


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a request acts for: a workspace and a role in it."""

    workspace_id: int
    workspace: str
    role: str
    # None when authentication is off.
    key_id: int | None
    expires_at: datetime.datetime | None = None

    def may(self, role: str) -> bool:
        """Whether this caller's role includes `role`."""
        return ROLES.index(self.role) >= ROLES.index(role)


class KeyRefused(Exception):
    """The credentials presented do not authenticate; the message says why,
    without repeating the key."""


def presented_key(header: str | None) -> str:
    """The key in an `Authorization` header value (or a websocket payload's
    `authorization` field); KeyRefused when there is none or it is not a
    bearer key."""
    if header is None or not header.strip():
        raise KeyRefused("no API key: send the header 'Authorization: Bearer"
                         " <key>' (create a key with `assay keys create`)")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise KeyRefused("the Authorization header must be 'Bearer <key>'")
    return key.strip()


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


async def authenticate(pool: asyncpg.Pool, presented: str,
                       recent: RecentKeys | None = None) -> Caller:
    """The caller a presented key acts for; KeyRefused for a key that is
    unknown, revoked or expired.

    The key is looked up by its SHA-256 digest, never by the key itself, so
    how long the lookup takes says nothing about how much of a stored key a
    guess matched: that is what keeps the check constant in time. The final
    compare_digest re-checks the row the index found, in constant time too.

    With `recent`, a key accepted within its max_age_s is not looked up again
    (expiry is still checked every time).
    """
    presented_digest = digest(presented)
    row = recent.get(presented_digest) if recent is not None else None
    # A revocation through this process while the row is being read makes
    # that row unfit to remember.
    revocations = recent.revocations if recent is not None else 0
    if row is None:
        found = await key_store.key_by_digest(pool, presented_digest)
        if found is None or not hmac.compare_digest(found[1], presented_digest):
            raise KeyRefused("the API key is not valid")
        row = found[0]
    status = row.status(datetime.datetime.now(datetime.UTC))
    if status != "active":
        raise KeyRefused(f"the API key has been {status}"
                         if status == "revoked" else "the API key has expired")
    if recent is not None and recent.revocations == revocations:
        recent.remember(presented_digest, row)
    return Caller(workspace_id=row.workspace_id, workspace=row.workspace,
                  role=row.role, key_id=row.id, expires_at=row.expires_at)


class RecentKeys:
    """The keys one API process accepted lately, so that a client's every
    request does not cost a database query.

    A key revoked through this process's API is forgotten at once. One revoked
    any other way (`assay keys revoke`, another API process) is still accepted
    here for up to `max_age_s`, the same time within which that process's
    key check ends its websockets.
    """

    def __init__(self, max_age_s: float, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.max_keys = max_keys
        self._clock = clock
        # digest -> (the key's row, when it was read); oldest first.
        self._rows: dict[str, tuple[ApiKeyRow, float]] = {}
        # How many keys were revoked through this process so far.
        self.revocations = 0

    def get(self, key_digest: str) -> ApiKeyRow | None:
        entry = self._rows.get(key_digest)
        if entry is None:
            return None
        row, read_at = entry
        if self._clock() - read_at > self.max_age_s:
            del self._rows[key_digest]
            return None
        return row

    def remember(self, key_digest: str, row: ApiKeyRow) -> None:
        if key_digest in self._rows:
            return  # keeps the time it was read
        if len(self._rows) >= self.max_keys:
            # A flood of distinct valid keys: the oldest go first.
            del self._rows[next(iter(self._rows))]
        self._rows[key_digest] = (row, self._clock())

    def forget(self, key_id: int) -> None:
        """Drop a key that has just been revoked."""
        self.revocations += 1
        for key_digest in [d for d, (row, _) in self._rows.items()
                           if row.id == key_id]:
            del self._rows[key_digest]


async def unauthenticated_caller(pool: asyncpg.Pool) -> Caller:
    """Who every request acts as when authentication is off: an admin of the
    workspace "default"."""
    workspace_id = await key_store.ensure_workspace(pool, DEFAULT_WORKSPACE)
    return Caller(workspace_id=workspace_id, workspace=DEFAULT_WORKSPACE,
                  role=ADMIN, key_id=None)
