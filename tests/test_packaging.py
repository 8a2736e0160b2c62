"""The files that start Assay outside Python agree with the `assay` command.

docker-compose.yml, the Dockerfile, the Makefile, .ci/run and the README all
spell out `assay` commands or make targets; these tests hold them against the
real argument parser and Makefile, so renaming a flag or a target breaks a
test here rather than a newcomer's first command.

The compose file is read as text: the project does not depend on a YAML
parser, and the lines checked here are written in a fixed, simple shape.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from app.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ASSAY_SERVICES = ("migrate", "api", "worker", "simulator")


def _parses(words: list[str]) -> None:
    """Fail the test, with argparse's complaint, unless `assay WORDS` parses."""
    try:
        _parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"the CLI rejects `assay {shlex.join(words)}`")


def _compose_services() -> dict[str, str]:
    """Each service's block of docker-compose.yml, by service name."""
    text = COMPOSE.read_text(encoding="utf-8")
    section = re.search(r"^services:\n(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert section, "docker-compose.yml has no services section"
    blocks = re.split(r"^  ([\w-]+):[ \t]*\n", section[1], flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2], strict=True))


def _command(block: str) -> list[str]:
    found = re.search(r"^    command: (\[.*\])[ \t]*$", block, re.M)
    assert found, f"no one-line command: [...] in\n{block}"
    return json.loads(found[1])


def _depends_on(block: str) -> dict[str, str]:
    """The services this one depends on, and the condition for each."""
    section = re.search(r"^    depends_on:\n((?:      .*\n?)*)", block, re.M)
    if section is None:
        return {}
    return dict(re.findall(r"^      ([\w-]+):\n\s+condition: (\w+)", section[1], re.M))


class TestDockerCompose:
    def test_every_assay_service_runs_a_command_the_cli_accepts(self):
        services = _compose_services()
        assay_services = {name: block for name, block in services.items()
                          if "<<: *assay" in block}

        assert set(ASSAY_SERVICES) <= set(assay_services)
        for block in assay_services.values():
            _parses(_command(block))

    def test_api_and_simulator_listen_beyond_their_container(self):
        services = _compose_services()

        for name in ("api", "simulator"):
            args = _parser().parse_args(_command(services[name]))
            assert args.host == "0.0.0.0", name

    def test_api_worker_and_simulator_wait_for_a_successful_migration(self):
        services = _compose_services()

        for name in ("api", "worker", "simulator"):
            depends_on = _depends_on(services[name])
            assert depends_on.get("migrate") == "service_completed_successfully", name

    def test_the_migration_waits_for_a_healthy_database(self):
        depends_on = _depends_on(_compose_services()["migrate"])

        assert depends_on == {"postgres": "service_healthy"}

    def test_every_long_running_server_has_a_health_check(self):
        services = _compose_services()

        for name in ("postgres", "redis", "api", "simulator"):
            assert "\n    healthcheck:\n" in services[name], name

    def test_services_reach_each_other_by_service_name(self):
        text = COMPOSE.read_text(encoding="utf-8")

        assert re.search(r"DATABASE_URL: postgresql://\S+@postgres:5432/assay", text)
        assert "REDIS_URL: redis://redis:6379/0" in text
        assert "OPENAI_BASE_URL: http://simulator:8001/v1" in text


class TestDockerfile:
    def test_the_image_runs_the_assay_command_with_the_files_it_reads(self):
        dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()

        assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
        assert re.search(r"^COPY \. /app$", dockerfile, re.M)
        assert re.search(r"pip install -e \.", dockerfile)
        assert re.search(r'^ENTRYPOINT \["assay"\]$', dockerfile, re.M)
        for needed in ("db", "db/schema.sql", "examples", "app", "pyproject.toml"):
            assert needed not in ignored

    def test_the_default_command_is_one_the_cli_accepts(self):
        dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        found = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)

        assert found
        _parses(json.loads(found[1]))


class TestMakefile:
    def test_demo_and_test_targets_run_assay_demo_and_pytest(self):
        if shutil.which("make") is None:
            pytest.skip("make is not installed")
        # A dry run prints the recipes without running them. Run from `make
        # test`, it would inherit the outer make's flags and level.
        env = {name: value for name, value in os.environ.items()
               if name not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        demo, test = (
            subprocess.run(["make", "--no-print-directory", "-n", target],
                           cwd=ROOT, env=env, text=True, capture_output=True,
                           timeout=30)
            for target in ("demo", "test"))

        assert demo.returncode == 0, demo.stderr
        assert demo.stdout.strip().splitlines()[-1].startswith(".venv/bin/assay demo")
        assert test.returncode == 0, test.stderr
        assert test.stdout.strip().splitlines()[-1] == ".venv/bin/pytest"

    def test_ci_starts_what_the_tests_need_then_runs_make_test(self):
        ci = ROOT / ".ci" / "run"
        script = ci.read_text(encoding="utf-8")

        assert os.access(ci, os.X_OK)
        assert re.search(r"^timeout .*make test", script, re.M)
        assert "pg_isready" in script and "redis-cli" in script
        syntax = subprocess.run(["bash", "-n", str(ci)], capture_output=True,
                                text=True, timeout=30)
        assert syntax.returncode == 0, syntax.stderr


class TestReadme:
    @pytest.fixture
    def commands(self) -> list[list[str]]:
        readme = ROOT / "README.md"
        if not readme.exists():
            pytest.skip("README.md is not written yet")
        return [_words(command) for command in
                _shell_commands(readme.read_text(encoding="utf-8"))]

    def test_it_starts_with_make_demo_and_make_test(self, commands):
        make_commands = [words for words in commands if words[:1] == ["make"]]

        assert make_commands[:2] == [["make", "demo"], ["make", "test"]]

    def test_every_make_target_it_names_exists(self, commands):
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))

        for words in commands:
            if words[:1] == ["make"]:
                for target in (word for word in words[1:] if "=" not in word):
                    assert target in targets, f"`{shlex.join(words)}`: no such target"

    def test_every_assay_command_it_shows_is_accepted_by_the_cli(self, commands):
        for words in commands:
            if words and Path(words[0]).name == "assay":
                _parses(words[1:])
            elif words[:2] == ["make", "demo"]:
                for word in words[2:]:
                    if word.startswith("DEMO_ARGS="):
                        _parses(["demo", *shlex.split(word.split("=", 1)[1])])


def _words(command: str) -> list[str]:
    """A shell command's words, without a comment, a trailing `&` or leading
    VARIABLE=value settings."""
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    if words[-1:] == ["&"]:
        words.pop()
    return words


def _shell_commands(markdown: str) -> list[str]:
    """The commands in the shell code blocks of a Markdown text (blocks marked
    sh, bash, shell or console), with `$ ` prompts dropped and continued lines
    joined."""
    commands: list[str] = []
    language: str | None = None  # None outside a code block
    pending = ""
    for line in markdown.splitlines():
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence:
            language = fence[1].lower() if language is None else None
            continue
        if language not in ("sh", "bash", "shell", "console"):
            continue
        line = pending + line.strip().removeprefix("$ ")
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if line and not line.startswith("#"):
            commands.append(line)
    return commands
