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
