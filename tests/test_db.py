from pathlib import Path

import asyncpg
import pytest

from app.settings import Settings
from app.store import db
from tests.conftest import ADMIN_DATABASE_URL, RUN_ID, _with_database


async def test_migrate_is_idempotent_on_an_up_to_date_database(database_url, pool):
    version = await db.migrate(Settings(database_url=database_url))

    assert version == db.required_schema_version()
    await db.check_schema(pool)


async def test_jsonb_round_trips_on_every_pooled_connection(pool):
    value = {"question": "Wie spät ist es? 🕰", "n": [1, 2.5, None, True]}
    conns = [await pool.acquire() for _ in range(3)]
    try:
        for conn in conns:
            assert await conn.fetchval("SELECT $1::jsonb", value) == value
    finally:
        for conn in conns:
            await pool.release(conn)


async def test_migrate_mends_the_first_cut_of_the_idempotency_key_check(
        database_url, pool):
    await pool.execute(
        "ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_check;"
        " ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_check"
        " CHECK ((test_set_id IS NULL) <> (evaluation_id IS NULL)) NOT VALID")

    await db.migrate(Settings(database_url=database_url))

    definition = await pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'idempotency_keys_check'")
    assert "<>" not in definition and "OR" in definition


async def test_migrating_from_schema_5_gives_existing_data_to_the_default_workspace(
        database_url):
    """A database made before workspaces: its test sets, evaluations and
    idempotency keys all end up in "default", and names become unique per
    workspace."""
    name = f"assay_test_{RUN_ID}_v5"
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(ADMIN_DATABASE_URL, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute((Path(__file__).parent / "fixtures"
                                / "schema_v5.sql").read_text())
            test_set = await conn.fetchval(
                "INSERT INTO test_sets (name) VALUES ('old') RETURNING id")
            await conn.execute(
                "INSERT INTO evaluations (test_set_id, model, prompt_template,"
                " scorer_type, concurrency, total_cases) VALUES"
                " ($1, 'm', 't', 'NUMERIC', 1, 0)", test_set)
            await conn.execute(
                "INSERT INTO idempotency_keys (operation, key, request_digest,"
                " test_set_id) VALUES ('createTestSet', 'k', 'd', $1)", test_set)

            assert await db.migrate(Settings(database_url=url)) == 7

            default = await conn.fetchval(
                "SELECT id FROM workspaces WHERE name = 'default'")
            other = await conn.fetchval(
                "INSERT INTO workspaces (name) VALUES ('other') RETURNING id")
            assert await conn.fetchval(
                "SELECT workspace_id FROM test_sets") == default
            assert await conn.fetchval(
                "SELECT workspace_id FROM evaluations") == default
            assert await conn.fetchval(
                "SELECT workspace_id FROM idempotency_keys") == default
            # The same name and key are free in another workspace...
            await conn.execute(
                "INSERT INTO test_sets (name, workspace_id) VALUES ('old', $1)", other)
            await conn.execute(
                "INSERT INTO idempotency_keys (operation, key, request_digest,"
                " workspace_id) VALUES ('createTestSet', 'k', 'd', $1)", other)
            # ...but an evaluation cannot belong to another workspace than its
            # test set's.
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await conn.execute(
                    "INSERT INTO evaluations (test_set_id, workspace_id, model,"
                    " prompt_template, scorer_type, concurrency, total_cases)"
                    " VALUES ($1, $2, 'm', 't', 'NUMERIC', 1, 0)", test_set, other)
            assert await db.migrate(Settings(database_url=url)) == 7
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
