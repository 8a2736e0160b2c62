"""GraphQL types of API keys and of who a request acts as."""

from __future__ import annotations

import datetime
import enum

import strawberry
from strawberry.types import Info

from app import ids
from app.context import Context
from app.store import api_keys as key_store
from app.store.api_keys import ApiKeyRow


@strawberry.enum(description="What a key may do in its workspace.")
class ApiKeyRole(enum.Enum):
    VIEWER = strawberry.enum_value("viewer", description="Query and subscribe.")
    EDITOR = strawberry.enum_value(
        "editor", description="Also create, delete, run, re-run and cancel.")
    ADMIN = strawberry.enum_value(
        "admin", description="Also create, list and revoke the workspace's keys.")


@strawberry.enum(description="Whether a key still works.")
class ApiKeyStatus(enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


@strawberry.type(description="An API key of a workspace; never the key itself,"
                 " which is shown once, when it is created.")
class ApiKey:
    id: strawberry.ID = strawberry.field(description="Opaque id of the key.")
    name: str | None = strawberry.field(description="The label given to it.")
    workspace: str = strawberry.field(description="The workspace it acts in.")
    role: ApiKeyRole = strawberry.field(description="What it may do there.")
    key_start: str = strawberry.field(
        description="The key's first characters, to tell keys apart.")
    status: ApiKeyStatus = strawberry.field(description="Whether it still works.")
    created_at: datetime.datetime = strawberry.field(description="When it was made.")
    expires_at: datetime.datetime | None = strawberry.field(
        description="When it stops working; null if never.")
    revoked_at: datetime.datetime | None = strawberry.field(
        description="When it was revoked; null if it was not.")

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            id=strawberry.ID(ids.encode(ids.Kind.API_KEY, row.id)),
            name=row.name, workspace=row.workspace, role=ApiKeyRole(row.role),
            key_start=row.key_start,
            status=ApiKeyStatus(row.status(datetime.datetime.now(datetime.UTC))),
            created_at=row.created_at, expires_at=row.expires_at,
            revoked_at=row.revoked_at)


@strawberry.type(description="A new API key and the key itself.")
class CreatedApiKey:
    api_key: ApiKey = strawberry.field(description="The key as it is stored.")
    key: str = strawberry.field(
        description="The key to send as 'Authorization: Bearer <key>'. It is"
        " shown only here: Assay keeps a digest of it, not the key.")


@strawberry.type(name="Caller", description="Who the request acts as.")
class CallerInfo:
    workspace: str = strawberry.field(description="The workspace it acts in.")
    role: ApiKeyRole = strawberry.field(description="What it may do there.")
    key_id: strawberry.Private[int | None]

    @strawberry.field(
        description="The key it presented; null when authentication is off.")
    async def api_key(self, info: Info[Context, None]) -> ApiKey | None:
        # Read only when asked for: `me { workspace }` costs no query.
        if self.key_id is None:
            return None
        row = await key_store.key_by_id(info.context.pool, self.key_id)
        return ApiKey.from_row(row) if row else None


@strawberry.input(description="A new API key for the caller's workspace.")
class CreateApiKeyInput:
    role: ApiKeyRole = strawberry.field(description="What the key may do.")
    name: str | None = strawberry.field(
        default=None, description="A label, to tell keys apart.")
    expires_in_days: float | None = strawberry.field(
        default=None, description="The key stops working after this many days;"
        " never if null.")
