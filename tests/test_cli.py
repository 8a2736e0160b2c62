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


@pytest.mark.parametrize("command", ["serve", "worker", "simulator"])
def test_serve_worker_and_simulator_refuse_a_database_without_the_schema(
        empty_database_url, redis_prefix, command):
    from tests.stack import free_port

    args = [command] if command == "worker" else [command, "--port",
                                                  str(free_port())]
    run = assay(*args, env={"DATABASE_URL": empty_database_url,
                            "ASSAY_REDIS_PREFIX": redis_prefix})

    assert run.returncode != 0
    assert "assay migrate" in run.stderr
    assert "Traceback" not in run.stderr


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


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_settings_refuse_numbers_that_are_not_finite(value):
    with pytest.raises(SettingsError, match="ASSAY_MODEL_TIMEOUT_S must be a number"):
        Settings.from_env({"ASSAY_MODEL_TIMEOUT_S": value})


def test_settings_refuse_an_idempotency_key_time_past_its_maximum():
    with pytest.raises(SettingsError, match="ASSAY_IDEMPOTENCY_KEY_HOURS must be"
                       " at most"):
        Settings.from_env({"ASSAY_IDEMPOTENCY_KEY_HOURS": "1e9"})


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_worker_refuses_a_max_evaluations_below_one(value):
    run = assay("worker", "--max-evaluations", value, env={})

    assert run.returncode == 2
    assert "--max-evaluations: must be a whole number of 1 or more" in run.stderr


def test_serve_with_redis_down_says_so_in_one_line(settings):
    from tests.stack import free_port

    run = assay("serve", "--port", str(free_port()), env={
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})

    assert run.returncode == 1
    assert "cannot connect to Redis at redis://127.0.0.1:" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`assay schema | head` and the like: no traceback when the pipe closes."""
    reader_gone = subprocess.Popen([*ASSAY, "schema"], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader_gone.stdout.close()  # before the command has written anything
    _, stderr = reader_gone.communicate(timeout=60)

    assert reader_gone.returncode == 141
    assert stderr == b""
