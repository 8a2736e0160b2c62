from app.settings import Settings
from app.store import db


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
