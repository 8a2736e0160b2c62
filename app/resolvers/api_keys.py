"""Who the caller is, and admins' management of their workspace's keys."""

from __future__ import annotations

import datetime
import logging
import math
from typing import Annotated

import strawberry
from strawberry.types import Info

from app import auth, ids, validation
from app.auth import ADMIN
from app.context import Context
from app.errors import BadUserInput, NotFound
from app.resolvers.access import require
from app.schema.api_keys import (
    ApiKey,
    ApiKeyRole,
    CallerInfo,
    CreateApiKeyInput,
    CreatedApiKey,
)
from app.store import api_keys as key_store

log = logging.getLogger(__name__)

ApiKeyId = Annotated[strawberry.ID, strawberry.argument(description="The key's id.")]
# About a thousand years: far enough to mean "never" without overflowing a
# timestamp.
MAX_EXPIRY_DAYS = 365_000


@strawberry.type
class ApiKeyQueries:
    @strawberry.field(description="Who this request acts as: its workspace, its"
                      " role and the key it presented.")
    async def me(self, info: Info[Context, None]) -> CallerInfo:
        caller = info.context.authenticated
        return CallerInfo(workspace=caller.workspace, role=ApiKeyRole(caller.role),
                          key_id=caller.key_id)

    @strawberry.field(description="The keys of the caller's workspace, oldest"
                      " first (admin only).")
    async def api_keys(self, info: Info[Context, None]) -> list[ApiKey]:
        caller = require(info.context, ADMIN)
        rows = await key_store.list_keys(info.context.pool,
                                         workspace_id=caller.workspace_id)
        return [ApiKey.from_row(row) for row in rows]


@strawberry.type
class ApiKeyMutations:
    @strawberry.mutation(description="Makes a key for the caller's workspace"
                         " (admin only); the key is in the answer and nowhere else.")
    async def create_api_key(self, info: Info[Context, None],
                             input: CreateApiKeyInput) -> CreatedApiKey:
        caller = require(info.context, ADMIN)
        name = validation.text(input.name, "input.name",
                               max_length=validation.MAX_NAME_LENGTH)
        expires_at = None
        if input.expires_in_days is not None:
            days = input.expires_in_days
            if not (math.isfinite(days) and 0 < days <= MAX_EXPIRY_DAYS):
                raise BadUserInput(f"input.expiresInDays: must be above 0 and at"
                                   f" most {MAX_EXPIRY_DAYS}, got {days}")
            expires_at = (datetime.datetime.now(datetime.UTC)
                          + datetime.timedelta(days=days))

        row, key = await auth.create_key(info.context.pool, caller.workspace,
                                         input.role.value, name=name,
                                         expires_at=expires_at)
        log.info("API key %s made for workspace %r with role %s by key %s",
                 row.id, row.workspace, row.role, caller.key_id)
        return CreatedApiKey(api_key=ApiKey.from_row(row), key=key)

    @strawberry.mutation(description="Stops a key of the caller's workspace from"
                         " working (admin only); its open websockets are closed."
                         " Revoking a revoked key changes nothing.")
    async def revoke_api_key(self, info: Info[Context, None],
                             id: ApiKeyId) -> ApiKey:
        caller = require(info.context, ADMIN)
        key_id = ids.decode(ids.Kind.API_KEY, id, field="id")
        row = await key_store.revoke_key(info.context.pool, key_id,
                                         workspace_id=caller.workspace_id)
        if row is None:
            raise NotFound("id: no API key with this id")
        log.info("API key %s of workspace %r revoked by key %s", row.id,
                 row.workspace, caller.key_id)
        if info.context.services.recent_keys is not None:
            info.context.services.recent_keys.forget(row.id)
        await info.context.services.connections.end(row.id)
        return ApiKey.from_row(row)

