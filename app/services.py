"""Finding PostgreSQL and Redis, or starting private ones when they are missing.

`ensure_services` uses the servers that DATABASE_URL and REDIS_URL name when
they answer. When one does not, it starts a private instance in a data
directory (`.assay/` in the current directory by default) on a free loopback
port, and returns settings that point at what is used. The `LocalServices` it
returns stops only what it started.

`ChildProcess` is how Assay runs a program of its own in the background: its
output goes to a log file, and stopping it escalates from SIGTERM to SIGKILL.

A PostgreSQL started here keeps its data between runs in
`DATA_DIR/postgres/data`; Redis keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import glob
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.settings import Settings

log = logging.getLogger(__name__)

Report = Callable[[str], None]

DEFAULT_DATA_DIR = Path(".assay")
PROBE_TIMEOUT_S = 3.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOCAL_DATABASE = "assay"
LOCAL_DATABASE_USER = "postgres"
# PostgreSQL refuses to run as root; a root caller runs it as this user.
POSTGRES_SYSTEM_USER = "postgres"
# Debian and Ubuntu install the PostgreSQL server programs here, off PATH.
POSTGRES_BIN_GLOBS: Sequence[str] = ("/usr/lib/postgresql/*/bin",)
# A unix socket's path holds at most 107 bytes on Linux; PostgreSQL's socket
# in a data dir deeper than this would not fit, so it then listens on TCP only.
_MAX_SOCKET_DIR_CHARS = 80
_PR_SET_PDEATHSIG = 1
_INCLUDE_LINE = "include_if_exists = 'assay.conf'"
_INSTALL_POSTGRES = "install PostgreSQL (Debian: apt-get install postgresql)"
_INSTALL_REDIS = "install Redis (Debian: apt-get install redis-server)"


class ServiceError(RuntimeError):
    """PostgreSQL or Redis can neither be used nor started; says what to do."""


# --- Probing ----------------------------------------------------------------


async def postgres_answers(url: str) -> bool:
    """Whether a PostgreSQL server answers at `url`, even one that refuses
    the connection (no such database, wrong password)."""
    state, _ = await _probe_postgres(url)
    return state != "down"


async def redis_answers(url: str) -> bool:
    """Whether a Redis server at `url` answers PING."""
    client = aioredis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S,
                               socket_timeout=PROBE_TIMEOUT_S)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def _probe_postgres(url: str) -> tuple[str, Exception | None]:
    """"ready", "no-database", "refused" (with the server's reason) or "down"."""
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError as error:
        return "no-database", error
    except (OSError, asyncpg.CannotConnectNowError,
            asyncpg.ConnectionDoesNotExistError) as error:
        return "down", error
    except asyncpg.PostgresError as error:
        return "refused", error
    await conn.close()
    return "ready", None


async def _create_database(url: str) -> str:
    """Create the database `url` names, connecting to its server's `postgres`
    database to do so; its name."""
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/")) or parts.username or LOCAL_DATABASE
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")),
                                  timeout=PROBE_TIMEOUT_S)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
    except asyncpg.DuplicateDatabaseError:
        pass  # created meanwhile by another process; just as good
    finally:
        await admin.close()
    return name


# --- Ports and child processes ------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do, so that a port left in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@functools.cache
def _stop_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that has Linux send the child SIGTERM when this process
    dies, so that a crashed or killed parent leaves no server behind."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Looked up here, before any fork: the hook runs in the forked child,
        # where loading a library could deadlock on a lock another thread held.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)

    return hook


class ChildProcess:
    """A program this process started in the background, logging to a file.

    The child gets a session of its own, so a Ctrl-C in the terminal reaches
    only this process, which then stops its children in order.
    """

    def __init__(self, name: str, process: subprocess.Popen[bytes],
                 log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log_path: Path,
              env: Mapping[str, str] | None = None) -> ChildProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                start_new_session=True, preexec_fn=_stop_with_parent())
        log.debug("started %s (pid %d): %s", name, process.pid, " ".join(argv))
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def log_tail(self, num_lines: int = 12) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-num_lines:])

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it is still running after `timeout_s`."""
        if self.exit_code() is not None:
            return
        self._signal(signal.SIGTERM)
        if await self._wait(timeout_s):
            log.debug("%s (pid %d) stopped", self.name, self.pid)
            return
        log.warning("%s (pid %d) did not stop within %.0f s of SIGTERM; killing it",
                    self.name, self.pid, timeout_s)
        self._signal(signal.SIGKILL)
        await self._wait(timeout_s)

    def _signal(self, signum: int) -> None:
        # The whole process group, which the child leads: whatever it started
        # goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def _wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.exit_code() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


async def _run_program(argv: Sequence[str], what: str, log_path: Path,
                       timeout_s: float = 120.0) -> None:
    """Run a program to its end, appending its output to `log_path`; a
    ServiceError naming `what` if it fails."""
    with open(log_path, "ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, cwd=log_path.parent, start_new_session=True)
        try:
            code = await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ServiceError(f"{what} did not finish within {timeout_s:.0f} s;"
                               f" see {log_path}") from None
    if code != 0:
        raise ServiceError(f"{what} failed with exit code {code}; see {log_path}:\n"
                           f"{_tail(log_path)}")


def _tail(path: Path, num_lines: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-num_lines:])


# --- Local PostgreSQL -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PostgresPrograms:
    initdb: str
    pg_ctl: str
    # Prefixed to every PostgreSQL command: empty, or runuser for root.
    run_as: tuple[str, ...]
    uid: int | None


def _find_postgres_programs() -> _PostgresPrograms | str:
    """The programs to run a private PostgreSQL with, or why there are none."""
    initdb = shutil.which("initdb")
    if initdb is None:
        initdb = next((str(Path(bin_dir) / "initdb")
                       for bin_dir in _bin_dirs_newest_first()
                       if (Path(bin_dir) / "initdb").is_file()), None)
    if initdb is None:
        return f"initdb was not found: {_INSTALL_POSTGRES}"
    # pg_ctl of the same release as initdb: the one beside it.
    pg_ctl = Path(initdb).resolve().with_name("pg_ctl")
    if not pg_ctl.is_file():
        return f"pg_ctl was not found beside {initdb}: {_INSTALL_POSTGRES}"

    if os.geteuid() != 0:
        return _PostgresPrograms(initdb, str(pg_ctl), (), None)
    try:
        user = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        return (f"PostgreSQL does not run as root, and there is no "
                f"{POSTGRES_SYSTEM_USER!r} user to run it as: create one or run "
                f"as another user")
    runuser = shutil.which("runuser") or next(
        (path for path in ("/usr/sbin/runuser", "/sbin/runuser")
         if Path(path).is_file()), None)
    if runuser is None:
        return ("PostgreSQL does not run as root, and runuser was not found to "
                f"run it as {POSTGRES_SYSTEM_USER!r}: install util-linux or run as "
                "another user")
    return _PostgresPrograms(initdb, str(pg_ctl),
                             (runuser, "-u", POSTGRES_SYSTEM_USER, "--"),
                             user.pw_uid)


def _bin_dirs_newest_first() -> list[str]:
    dirs = [found for pattern in POSTGRES_BIN_GLOBS for found in glob.glob(pattern)]

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)

    return sorted(dirs, key=version, reverse=True)


class LocalPostgres:
    """A PostgreSQL server in DATA_DIR/postgres/data, on 127.0.0.1 only."""

    def __init__(self, programs: _PostgresPrograms, data_dir: Path) -> None:
        self.programs = programs
        self.root = data_dir / "postgres"
        self.pgdata = self.root / "data"
        self.log_path = data_dir / "logs" / "postgresql.log"
        self.port: int | None = None
        # False when a server from an earlier run was still up and is reused.
        self.started = False

    @property
    def url(self) -> str:
        return (f"postgresql://{LOCAL_DATABASE_USER}@127.0.0.1:{self.port}"
                f"/{LOCAL_DATABASE}")

    async def start(self, report: Report) -> None:
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            report(f"Creating a PostgreSQL data directory in {self.pgdata}")
            await _run_program(
                [*self.programs.run_as, self.programs.initdb, "-D", str(self.pgdata),
                 "-U", LOCAL_DATABASE_USER, "--auth=trust", "--encoding=UTF8",
                 "--no-locale"],
                "initdb", self.log_path)
            with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.write(f"\n# Written by Assay: port and addresses.\n"
                           f"{_INCLUDE_LINE}\n")

        self.port = self._running_port()
        if self.port is not None:
            report(f"Using the PostgreSQL already running in {self.pgdata} on port"
                   f" {self.port}")
            return

        self.port = self._choose_port()
        self._write_local_conf()
        await _run_program(
            [*self.programs.run_as, self.programs.pg_ctl, "-D", str(self.pgdata),
             "-l", str(self.log_path), "-w", "-t", str(int(START_TIMEOUT_S)),
             "start"],
            "starting PostgreSQL (pg_ctl start)", self.log_path,
            timeout_s=START_TIMEOUT_S + 10)
        self.started = True
        report(f"Started PostgreSQL on 127.0.0.1:{self.port} (data {self.pgdata},"
               f" log {self.log_path})")

    async def stop(self) -> None:
        if not self.started:
            return
        try:
            await _run_program(
                [*self.programs.run_as, self.programs.pg_ctl, "-D", str(self.pgdata),
                 "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S)), "stop"],
                "stopping PostgreSQL (pg_ctl stop)", self.log_path,
                timeout_s=STOP_TIMEOUT_S + 10)
        except ServiceError as error:
            log.warning("%s", error)
        self.started = False

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        uid = self.programs.uid
        if uid is None:
            return
        blocked = _first_dir_closed_to(uid, self.root)
        if blocked is not None:
            raise ServiceError(
                f"PostgreSQL runs as the {POSTGRES_SYSTEM_USER!r} user here, which "
                f"cannot enter {blocked}: choose a data directory that user can "
                "reach (--data-dir), or set DATABASE_URL")
        gid = pwd.getpwuid(uid).pw_gid
        for path in (self.root, self.log_path):
            os.chown(path, uid, gid)

    def _running_port(self) -> int | None:
        """The port of a server from an earlier run still up in this data dir."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a stale pid file, which PostgreSQL itself clears
        except PermissionError:
            pass
        return port

    def _choose_port(self) -> int:
        # The port of the last run when it is free, so that a psql command the
        # user noted still works.
        try:
            found = re.search(r"^port = (\d+)$",
                              (self.pgdata / "assay.conf").read_text(), re.M)
        except OSError:
            found = None
        if found and port_is_free(int(found[1])):
            return int(found[1])
        return free_port()

    def _write_local_conf(self) -> None:
        socket_dir = str(self.pgdata)
        if len(socket_dir) > _MAX_SOCKET_DIR_CHARS:
            socket_dir = ""  # TCP only
        path = self.pgdata / "assay.conf"
        path.write_text(
            "# Written by Assay at every start.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{_conf_quote(socket_dir)}'\n",
            encoding="utf-8")
        if self.programs.uid is not None:
            os.chown(path, self.programs.uid, pwd.getpwuid(self.programs.uid).pw_gid)


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _first_dir_closed_to(uid: int, path: Path) -> Path | None:
    """The first directory from / down to `path` that user `uid` cannot enter."""
    user = pwd.getpwuid(uid)
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


# --- Local Redis --------------------------------------------------------------


class LocalRedis:
    """A redis-server child process on 127.0.0.1 that saves nothing."""

    def __init__(self, program: str, data_dir: Path) -> None:
        self.program = program
        self.dir = data_dir / "redis"
        self.log_path = data_dir / "logs" / "redis.log"
        self.port = free_port()
        self.child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, report: Report) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.child = ChildProcess.start(
            "redis-server",
            [self.program, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", str(self.dir)],
            self.log_path)

        deadline = time.monotonic() + START_TIMEOUT_S
        while not await redis_answers(self.url):
            code = self.child.exit_code()
            if code is not None:
                raise ServiceError(
                    f"redis-server exited with code {code} while starting; see "
                    f"{self.log_path}:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"redis-server did not answer on port {self.port} within "
                    f"{START_TIMEOUT_S:.0f} s; see {self.log_path}")
            await asyncio.sleep(0.05)
        report(f"Started Redis on 127.0.0.1:{self.port} (log {self.log_path})")

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()


# --- Putting it together ------------------------------------------------------


@dataclasses.dataclass
class LocalServices:
    """What `ensure_services` started; `stop()` stops exactly that."""

    data_dir: Path
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None

    @property
    def started_anything(self) -> bool:
        return bool((self.postgres and self.postgres.started) or self.redis)

    async def stop(self) -> None:
        # Redis first: nothing of Assay's should outlive its database.
        if self.redis is not None:
            await self.redis.stop()
            self.redis = None
        if self.postgres is not None:
            await self.postgres.stop()
            self.postgres = None


async def ensure_services(settings: Settings, data_dir: Path = DEFAULT_DATA_DIR, *,
                          report: Report = log.info,
                          ) -> tuple[Settings, LocalServices]:
    """Settings whose PostgreSQL and Redis answer, starting private ones in
    `data_dir` where the configured ones do not, and what was started.

    A server that answers but lacks the configured database gets it created.
    Every step the user may want to know of goes to `report`.
    """
    data_dir = data_dir.resolve()
    pg_state, pg_error = await _probe_postgres(settings.database_url)
    redis_up = await redis_answers(settings.redis_url)
    if pg_state == "refused":
        raise ServiceError(f"PostgreSQL at {settings.safe_database_url} refused the"
                           f" connection: {pg_error}")

    # Every missing program is named at once, before anything is started.
    postgres_programs = redis_program = None
    missing = []
    if pg_state == "down":
        postgres_programs = _find_postgres_programs()
        if isinstance(postgres_programs, str):
            missing.append(f"PostgreSQL is not answering at "
                           f"{settings.safe_database_url} and {postgres_programs},"
                           " or set DATABASE_URL")
    if not redis_up:
        redis_program = shutil.which("redis-server")
        if redis_program is None:
            missing.append(f"Redis is not answering at {settings.safe_redis_url} and"
                           f" redis-server was not found: {_INSTALL_REDIS}, or set"
                           " REDIS_URL")
    if missing:
        raise ServiceError("; ".join(missing))

    services = LocalServices(data_dir)
    try:
        if isinstance(postgres_programs, _PostgresPrograms):
            report(f"PostgreSQL is not answering at {settings.safe_database_url};"
                   f" starting a local one in {data_dir}")
            services.postgres = LocalPostgres(postgres_programs, data_dir)
            await services.postgres.start(report)
            settings = settings.replace(database_url=services.postgres.url)
            pg_state, pg_error = await _probe_postgres(settings.database_url)
            if pg_state not in ("ready", "no-database"):
                raise ServiceError(
                    f"the local PostgreSQL does not answer at "
                    f"{settings.safe_database_url} ({pg_error}); see "
                    f"{services.postgres.log_path}")
        if pg_state == "no-database":
            name = await _create_database(settings.database_url)
            report(f"Created the database {name!r} at {settings.safe_database_url}")
        elif services.postgres is None:
            report(f"Using PostgreSQL at {settings.safe_database_url}")

        if redis_program is not None:
            report(f"Redis is not answering at {settings.safe_redis_url}; starting a"
                   " local one")
            services.redis = LocalRedis(redis_program, data_dir)
            await services.redis.start(report)
            settings = settings.replace(redis_url=services.redis.url)
        else:
            report(f"Using Redis at {settings.safe_redis_url}")
    except BaseException:
        await services.stop()
        raise
    return settings, services
