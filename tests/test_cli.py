"""The `assay` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from app.settings import Settings, SettingsError
from tests.conftest import ADMIN_DATABASE_URL, _with_database

ASSAY = [sys.executable, "-m", "app.cli"]
REPO = Path(__file__).resolve().parents[1]


def assay(*args: str, env: dict[str, str], timeout_s: float = 60,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ASSAY, *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
async def empty_database_url():
    name = f"assay_cli_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(ADMIN_DATABASE_URL, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_a_database_without_the_schema(
        empty_database_url, redis_prefix, command):
    run = assay(command, env={"DATABASE_URL": empty_database_url,
                              "ASSAY_REDIS_PREFIX": redis_prefix})

    assert run.returncode != 0
    assert "assay migrate" in run.stderr


def test_serve_on_a_missing_database_says_migrate_creates_it(redis_prefix):
    missing = _with_database(ADMIN_DATABASE_URL, f"assay_none_{uuid.uuid4().hex}")

    run = assay("serve", env={"DATABASE_URL": missing,
                              "ASSAY_REDIS_PREFIX": redis_prefix})

    assert run.returncode != 0
    assert "does not exist" in run.stderr
    assert "assay migrate" in run.stderr


def test_migrate_applies_to_an_empty_database_and_again_to_an_up_to_date_one(
        empty_database_url):
    first = assay("migrate", env={"DATABASE_URL": empty_database_url})
    second = assay("migrate", env={"DATABASE_URL": empty_database_url})

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "schema is at version" in second.stdout


async def test_migrate_creates_a_missing_database():
    name = f"assay_cli_new_{uuid.uuid4().hex[:10]}"
    url = _with_database(ADMIN_DATABASE_URL, name)
    try:
        run = assay("migrate", env={"DATABASE_URL": url})
        conn = await asyncpg.connect(url)
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables"
                                     " WHERE tablename = 'evaluations'")
        await conn.close()
    finally:
        admin = await asyncpg.connect(ADMIN_DATABASE_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    assert run.returncode == 0, run.stderr
    assert tables == 1


@pytest.mark.parametrize(("variable", "value"), [
    ("DATABASE_URL", "mysql://nope"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("OPENAI_BASE_URL", "ftp://example"),
    ("ASSAY_MODEL_TIMEOUT_S", "soon"),
    ("ASSAY_DEFAULT_CONCURRENCY", "0"),
    ("ASSAY_REDIS_PREFIX", "has spaces"),
])
def test_a_malformed_setting_stops_the_command_naming_the_variable(variable, value):
    run = assay("migrate", env={variable: value})

    assert run.returncode == 2
    assert variable in run.stderr


def test_settings_mask_the_database_password_and_hide_the_api_key():
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://assay:s3cret@db:5432/assay",
        "OPENAI_API_KEY": "sk-very-secret"})

    assert "s3cret" not in settings.safe_database_url
    assert "sk-very-secret" not in repr(settings)
    with pytest.raises(SettingsError, match="ASSAY_MAX_CONCURRENCY"):
        Settings.from_env({"ASSAY_MAX_CONCURRENCY": "-3"})


def test_schema_prints_the_served_sdl_holding_the_contract():
    run = assay("schema", env={})

    assert run.returncode == 0
    assert "type Subscription" in run.stdout
    contract = REPO.parent / "shared" / "contract" / "core.graphql"
    checker = REPO.parent / "shared" / "tools" / "contract_check.py"
    if not checker.exists():
        pytest.skip(f"contract checker not found at {checker}")
    served = REPO / ".pytest_cache" / "served.graphql"
    served.parent.mkdir(exist_ok=True)
    served.write_text(run.stdout)
    check = subprocess.run([sys.executable, str(checker), str(contract), str(served)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
