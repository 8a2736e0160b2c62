"""The `assay` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from app.settings import Settings, SettingsError

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The HTTP client logs every model call at INFO; a worker makes hundreds a
    # second, and the evaluation's own lines say what an operator needs.
    for noisy in ("httpx2", "httpx", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING,
                                              logging.getLogger().level))
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        parser.exit(2, f"assay: {exc}\n")
    try:
        code = asyncio.run(args.command(args, settings))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader of our output went away (`assay schema | head`): stop
        # quietly, and keep Python from failing again on flushing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more,"
                                         f" got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from app.importer import command as import_command
    from app.llm import simulator

    parser = argparse.ArgumentParser(
        prog="assay", description="Assay: evaluate LLM features against test sets.",
        epilog="Settings come from the environment: DATABASE_URL, REDIS_URL,"
        " OPENAI_BASE_URL, OPENAI_API_KEY and the ASSAY_* variables listed in"
        " README.md.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the GraphQL API")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000,
                       help="port to listen on (default: %(default)s)")
    serve.set_defaults(command=_serve)

    worker = commands.add_parser("worker", help="run evaluations from the queue")
    worker.add_argument("--max-evaluations", type=_at_least_one, default=4,
                        help="evaluations one worker runs at once (default 4)")
    worker.set_defaults(command=_worker)

    migrate = commands.add_parser(
        "migrate", help="create the database or update its schema")
    migrate.set_defaults(command=_migrate)

    schema = commands.add_parser("schema", help="print the served GraphQL schema (SDL)")
    schema.set_defaults(command=_schema)

    sim = commands.add_parser("simulator",
                              help="run a simulated OpenAI-compatible model")
    simulator.add_arguments(sim)
    sim.set_defaults(command=_simulator)

    importer = commands.add_parser("import", help="create a test set from a file")
    import_command.add_arguments(importer)
    importer.set_defaults(command=_import)

    keys = commands.add_parser("keys", help="make, list and revoke API keys")
    from app import keys_command
    keys_command.add_arguments(keys)
    keys.set_defaults(command=_keys)

    demo = commands.add_parser(
        "demo", help="run a whole evaluation with live progress, starting what is"
        " missing")
    from app import demo as demo_module
    demo_module.add_arguments(demo)
    demo.set_defaults(command=demo_module.run)
    return parser


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.server import create_app, server_options
    from app.store import db

    if not await _schema_is_current(settings, db) or not await _redis_answers(
            settings):
        return 1
    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port,
                            log_config=None, **server_options(settings))
    await uvicorn.Server(config).serve()
    return 0


async def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from redis.exceptions import RedisError

    from app.jobs.worker import build_worker
    from app.store import db

    if not await _schema_is_current(settings, db):
        return 1
    # arq gives up when Redis goes away; PostgreSQL holds every run's state,
    # so start again once Redis is back and the recovery sweep resumes runs.
    delay_s = 1.0
    stop_signals: list[object] = []
    while not stop_signals:
        worker = build_worker(settings, max_evaluations=args.max_evaluations)
        worker.on_stop = stop_signals.append
        try:
            await worker.async_run()
            return 0
        except asyncio.CancelledError:
            # arq stops its main task this way on SIGINT and SIGTERM.
            log.info("worker stopped")
            return 0
        except (RedisError, OSError) as exc:
            log.warning("worker lost Redis at %s (%s); starting again in %.0fs",
                        settings.safe_redis_url, exc, delay_s)
        finally:
            await _close_quietly(worker)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 30.0)
    log.info("worker stopped")
    return 0


async def _close_quietly(worker: Any) -> None:
    from redis.exceptions import RedisError

    # close() lets running evaluations finish first, then tells Redis; with
    # Redis gone that last step fails before arq runs our shutdown hook.
    try:
        await worker.close()
    except (RedisError, OSError) as exc:
        log.debug("closing the worker without Redis: %s", exc)
        # Let every run finish before the pool and model client close.
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        if worker.on_shutdown is not None:
            await worker.on_shutdown(worker.ctx)


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.store import db

    version = await db.migrate(settings)
    print(f"database schema is at version {version}")
    return 0


async def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from app.server import build_schema

    print(build_schema().as_str())
    return 0


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    from app.importer import command as import_command

    return await import_command.run(args, api_key=settings.api_key)


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from app import keys_command
    from app.store import db

    if not await _schema_is_current(settings, db):
        return 1
    return await keys_command.run(args, settings)


async def _simulator(args: argparse.Namespace, settings: Settings) -> int:
    from app.llm import simulator
    from app.store import db

    # It reads the test cases it answers from; a missing table would only
    # show as a traceback from deep inside its start-up.
    if not await _schema_is_current(settings, db):
        return 1
    return await simulator.run(args, settings)


async def _redis_answers(settings: Settings) -> bool:
    """Whether Redis answers a ping; says why not."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        await asyncio.wait_for(client.ping(), 10)
        return True
    except (RedisError, OSError, TimeoutError) as exc:
        print(f"assay: cannot connect to Redis at {settings.safe_redis_url}: {exc}",
              file=sys.stderr)
        return False
    finally:
        await client.aclose()


async def _schema_is_current(settings: Settings, db: Any) -> bool:
    """Refuse to start on a database whose schema is behind, saying why."""
    import asyncpg

    try:
        pool = await db.create_pool(settings, max_size=2)
    except asyncpg.InvalidCatalogNameError:
        print(f"assay: the database at {settings.safe_database_url} does not exist:"
              " run `assay migrate` to create it", file=sys.stderr)
        return False
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"assay: cannot connect to PostgreSQL at {settings.safe_database_url}:"
              f" {exc}", file=sys.stderr)
        return False
    try:
        await db.check_schema(pool)
    except db.SchemaOutOfDate as exc:
        print(f"assay: {exc}", file=sys.stderr)
        return False
    finally:
        await pool.close()
    return True


if __name__ == "__main__":
    main()
