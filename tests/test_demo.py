"""`assay demo` from the outside, and how app.services finds or starts servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2
import pytest

from app import services
from app.services import (
    ServiceError,
    ensure_services,
    free_port,
    postgres_answers,
    redis_answers,
)
from app.settings import Settings

EXAMPLE_CATEGORIES = ("arithmetic", "capitals", "units", "words")
DEMO_TIMEOUT_S = 120


def _assay_command() -> list[str]:
    script = Path(sys.executable).with_name("assay")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


def _processes_with_marker(marker: str) -> list[int]:
    """Pids of running processes whose environment holds `marker`."""
    needle = marker.encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return pids


def _closed_loopback_port() -> int:
    # Free a moment ago, and nothing of Assay's listens on it.
    return free_port()


class TestDemo:
    async def test_it_evaluates_the_example_and_stops_everything_it_started(
            self, settings, tmp_path):
        # Every process the demo starts inherits this, so any left running
        # afterwards can be found, and killed so as not to outlive the test.
        marker = f"ASSAY_DEMO_TEST_MARKER=demo-{uuid.uuid4().hex}"
        env = {**os.environ, "DATABASE_URL": settings.database_url,
               "REDIS_URL": settings.redis_url,
               "ASSAY_REDIS_PREFIX": settings.redis_prefix}
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            env.pop(name, None)
        key, value = marker.split("=")
        env[key] = value

        process = await asyncio.create_subprocess_exec(
            *_assay_command(), "demo", "--data-dir", str(tmp_path / "data"),
            "--port", str(free_port()), "--latency-ms", "5",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            stdout_bytes, stderr_bytes = await asyncio.wait_for(
                process.communicate(), DEMO_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"assay demo did not finish within {DEMO_TIMEOUT_S} s")
        finally:
            left_running = _processes_with_marker(value)
            for pid in left_running:
                os.kill(pid, signal.SIGKILL)
        stdout, stderr = stdout_bytes.decode(), stderr_bytes.decode()

        assert process.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
        assert re.search(r"evaluation \S+ COMPLETED", stdout), stdout
        for category in EXAMPLE_CATEGORIES:
            assert re.search(rf"^  {category} +\d+ +\d\.\d\d +\d+\.\d%$", stdout,
                             re.M), stdout
        assert re.search(r"^  overall +34 ", stdout, re.M), stdout
        assert "34/34 100%" in stderr, stderr
        assert "Made an admin API key of workspace 'demo'" in stderr, stderr
        assert left_running == [], "assay demo left processes running"

    async def test_kept_running_it_says_how_to_use_its_key_in_graphiql(
            self, settings, tmp_path):
        port = free_port()
        env = {**os.environ, "DATABASE_URL": settings.database_url,
               "REDIS_URL": settings.redis_url,
               "ASSAY_REDIS_PREFIX": f"{settings.redis_prefix}-kept"}
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ASSAY_AUTH"):
            env.pop(name, None)
        process = await asyncio.create_subprocess_exec(
            *_assay_command(), "demo", "--data-dir", str(tmp_path / "data"),
            "--port", str(port), "--latency-ms", "5", "--keep-running",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        said = []
        try:
            async with asyncio.timeout(DEMO_TIMEOUT_S):
                while not any("Headers tab" in line for line in said):
                    said.append((await process.stderr.readline()).decode())
                    assert said[-1], "".join(said)
                header = json.loads((await process.stderr.readline()).decode())
            async with httpx2.AsyncClient(timeout=30) as http:
                url = f"http://127.0.0.1:{port}/graphql"
                page = await http.get(url, headers={"Accept": "text/html"})
                me = await http.post(url, headers=header,
                                     json={"query": "{ me { workspace role } }"})
        finally:
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                await process.communicate()

        assert page.status_code == 200 and "graphiql" in page.text.lower()
        assert me.json() == {"data": {"me": {"workspace": "demo", "role": "ADMIN"}}}
        assert any(f"open http://127.0.0.1:{port}/graphql in a browser" in line
                   for line in said), "".join(said)
        assert process.returncode == 0

    async def test_it_fails_with_a_clear_message_when_postgresql_refuses_it(
            self, settings, tmp_path):
        parts = urlsplit(settings.database_url)
        role = f"no_such_role_{uuid.uuid4().hex[:8]}"
        refused_url = urlunsplit(parts._replace(
            netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
        env = {**os.environ, "DATABASE_URL": refused_url,
               "REDIS_URL": settings.redis_url,
               "ASSAY_REDIS_PREFIX": settings.redis_prefix}

        process = await asyncio.create_subprocess_exec(
            *_assay_command(), "demo", "--data-dir", str(tmp_path / "data"),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _, stderr_bytes = await asyncio.wait_for(process.communicate(), 60)
        stderr = stderr_bytes.decode()

        assert process.returncode == 1, stderr
        assert "assay demo failed: PostgreSQL at" in stderr
        assert f'role "{role}" does not exist' in stderr
        assert "Traceback" not in stderr


class TestServices:
    async def test_servers_that_answer_are_used_as_they_are(self, settings, tmp_path):
        reports: list[str] = []

        used, local = await ensure_services(settings, tmp_path, report=reports.append)
        await local.stop()

        assert (used.database_url, used.redis_url) == (settings.database_url,
                                                       settings.redis_url)
        assert not local.started_anything
        assert list(tmp_path.iterdir()) == []

    async def test_a_missing_database_is_created_on_a_server_that_answers(
            self, settings, tmp_path):
        name = f"assay_test_created_{uuid.uuid4().hex[:8]}"
        parts = urlsplit(settings.database_url)
        url = urlunsplit(parts._replace(path=f"/{name}"))
        reports: list[str] = []
        try:
            used, local = await ensure_services(settings.replace(database_url=url),
                                                tmp_path, report=reports.append)
            await local.stop()

            assert used.database_url == url
            assert await postgres_answers(url)
            assert any(f"Created the database {name!r}" in line for line in reports)
        finally:
            admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

    async def test_nothing_answers_on_a_closed_port(self):
        port = _closed_loopback_port()

        assert not await postgres_answers(f"postgresql://postgres@127.0.0.1:{port}/x")
        assert not await redis_answers(f"redis://127.0.0.1:{port}/0")

    async def test_missing_programs_are_named_with_what_to_install(
            self, monkeypatch, tmp_path):
        monkeypatch.setenv("PATH", "")
        monkeypatch.setattr(services, "POSTGRES_BIN_GLOBS", ())
        port = _closed_loopback_port()
        nowhere = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/assay",
                           redis_url=f"redis://127.0.0.1:{port}/0")

        with pytest.raises(ServiceError) as raised:
            await ensure_services(nowhere, tmp_path / "data")

        message = str(raised.value)
        assert (f"PostgreSQL is not answering at postgresql://postgres@127.0.0.1:"
                f"{port}/assay and initdb was not found: install PostgreSQL "
                "(Debian: apt-get install postgresql), or set DATABASE_URL"
                ) in message
        assert (f"Redis is not answering at redis://127.0.0.1:{port}/0 and "
                "redis-server was not found: install Redis (Debian: apt-get "
                "install redis-server), or set REDIS_URL") in message
        assert not (tmp_path / "data").exists()

    async def test_local_servers_are_started_reused_and_stopped(self):
        if shutil.which("redis-server") is None or isinstance(
                services._find_postgres_programs(), str):
            pytest.skip("PostgreSQL's initdb or redis-server is not installed")
        # Not under pytest's tmp_path: when the tests run as root, PostgreSQL
        # runs as the postgres user, who must be able to enter the directory.
        data_dir = Path(tempfile.mkdtemp(prefix="assay-services-test-"))
        data_dir.chmod(0o755)
        port = _closed_loopback_port()
        nowhere = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/assay",
                           redis_url=f"redis://127.0.0.1:{port}/0")
        first_reports: list[str] = []
        again_reports: list[str] = []
        try:
            used, local = await ensure_services(nowhere, data_dir,
                                                report=first_reports.append)
            try:
                conn = await asyncpg.connect(used.database_url)
                database = await conn.fetchval("SELECT current_database()")
                await conn.close()
                redis_answered = await redis_answers(used.redis_url)
            finally:
                await local.stop()
            stopped = (await postgres_answers(used.database_url),
                       await redis_answers(used.redis_url))

            used_again, local = await ensure_services(nowhere, data_dir,
                                                      report=again_reports.append)
            await local.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

        assert used.database_url != nowhere.database_url
        assert used.redis_url != nowhere.redis_url
        assert database == "assay"
        assert redis_answered
        assert stopped == (False, False)
        assert any("Creating a PostgreSQL data directory" in line
                   for line in first_reports)
        # The data directory of the first run is reused, on the same port.
        assert not any("Creating a PostgreSQL data directory" in line
                       for line in again_reports)
        assert used_again.database_url == used.database_url
