"""Connecting to PostgreSQL, applying db/schema.sql and checking its version."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app import json_text
from app.settings import Settings

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "db" / "schema.sql"
# What a query raises when PostgreSQL cannot be reached or went away under it
# (not a fault of the query itself).
UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError,
               asyncpg.PostgresConnectionError,
               asyncpg.exceptions.OperatorInterventionError,
               asyncpg.TooManyConnectionsError)
# Any constant works, as long as every Assay process uses the same one.
_MIGRATE_LOCK_KEY = 0x61737361


class SchemaOutOfDate(RuntimeError):
    """The database's schema is behind what this code needs."""


def schema_sql() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def required_schema_version() -> int:
    found = re.search(r"assay-schema-version:\s*(\d+)", schema_sql())
    if found is None:
        raise RuntimeError(f"{SCHEMA_PATH} does not declare assay-schema-version")
    return int(found.group(1))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Registered for every pooled connection, so jsonb comes back as Python
    # values whichever connection a query happens to run on.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog",
            encoder=json_text.dumps,
            decoder=json.loads,
        )


async def _skip_reset(conn: asyncpg.Connection) -> None:
    # Assay sets no session state, so the default reset on release is an
    # extra round trip per query for nothing.
    return None


async def create_pool(settings: Settings, *, max_size: int | None = None,
                      query_logger: Callable[[Any], None] | None = None,
                      application_name: str = "assay") -> asyncpg.Pool:
    """A pool whose connections decode JSON; `query_logger`, if given, hears
    of every statement (the tests and benchmarks count them with it)."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if query_logger is not None:
            conn.add_query_logger(query_logger)

    return await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=max_size or settings.db_pool_max_size,
        init=init,
        # Lets an operator tell Assay's processes apart in pg_stat_activity.
        server_settings={"application_name": application_name},
        reset=_skip_reset,
        command_timeout=60,
    )


async def migrate(settings: Settings) -> int:
    """Create the database if it is missing, then apply db/schema.sql; safe on
    an empty and on an up-to-date database."""
    try:
        conn = await asyncpg.connect(settings.database_url)
    except asyncpg.InvalidCatalogNameError:
        await _create_database(settings.database_url)
        conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_KEY)
            await conn.execute(schema_sql())
        version = await conn.fetchval("SELECT max(version) FROM schema_version")
    finally:
        await conn.close()
    log.info("database %s is at schema version %s", settings.safe_database_url,
             version)
    return version


async def _create_database(database_url: str) -> None:
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        # Identifiers cannot be bound as parameters; quote it as PostgreSQL does.
        await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await admin.close()
    log.info("created database %s", name)


async def check_schema(pool: asyncpg.Pool) -> None:
    """Refuse to run against a database whose schema is behind this code."""
    required = required_schema_version()
    has_table = await pool.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    current = (await pool.fetchval("SELECT max(version) FROM schema_version")
               if has_table else None)
    if current is None or current < required:
        raise SchemaOutOfDate(
            f"the database schema is at version {current or 'none'} but this "
            f"Assay needs version {required}: run `assay migrate` first"
        )
