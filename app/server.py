"""The API process: the GraphQL schema, the Starlette app and its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import strawberry
from graphql import GraphQLError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.extensions import SchemaExtension

from app.context import Context, Loaders, Services
from app.errors import ApiError
from app.events import ProgressHub
from app.jobs import queue
from app.resolvers import Mutation, Query, Subscription
from app.settings import Settings
from app.store import db

log = logging.getLogger(__name__)


class ErrorCodes(SchemaExtension):
    """Gives every error its `extensions.code` and hides unexpected ones.

    Errors about the request itself (syntax, unknown fields, wrong variable
    types) come from graphql-core with no original error: they are the
    client's, so they keep their message as BAD_USER_INPUT. Anything else that
    is not an ApiError is logged once here and replaced by a generic message.
    """

    def on_operation(self) -> Iterator[None]:
        yield
        _code_errors(self.execution_context.result)

    def on_stream_result(self, result: object) -> Iterator[None]:
        # Subscription events do not pass through on_operation's result.
        _code_errors(result)
        yield None


def _code_errors(result: object) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [_coded(error) for error in errors]


def _coded(error: GraphQLError) -> GraphQLError:
    if "code" in (error.extensions or {}):
        return error
    original = error.original_error
    while isinstance(original, GraphQLError):
        original = original.original_error
    if original is None:
        return _with_code(error, error.message, "BAD_USER_INPUT")
    if isinstance(original, ApiError):
        return _with_code(error, original.message, original.code)
    log.error("unexpected error in %s", ".".join(map(str, error.path or [])),
              exc_info=original)
    return _with_code(error, "Internal server error.", "INTERNAL_SERVER_ERROR")


def _with_code(error: GraphQLError, message: str, code: str) -> GraphQLError:
    return GraphQLError(message, nodes=error.nodes, source=error.source,
                        positions=error.positions, path=error.path,
                        extensions={**(error.extensions or {}), "code": code})


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError],
                       execution_context: object = None) -> None:
        # Strawberry would log every error, the client's own mistakes included;
        # ErrorCodes logs the unexpected ones, once.
        return None


def build_schema() -> strawberry.Schema:
    return _Schema(query=Query, mutation=Mutation, subscription=Subscription,
                   extensions=[ErrorCodes])


class AssayGraphQL(GraphQL):
    """The GraphQL endpoint, with Assay's context on every operation."""

    async def get_context(self, request: Request | WebSocket,
                          response: Response | WebSocket) -> Context:
        services: Services = request.app.state.services
        return Context(services=services, request=request,
                       loaders=Loaders(services.pool))


async def healthz(request: Request) -> JSONResponse:
    """200 only when PostgreSQL and Redis both answer; 503 naming what is down."""
    services: Services = request.app.state.services
    down = []
    try:
        await services.pool.fetchval("SELECT 1", timeout=2)
    except Exception as exc:
        log.warning("health check: PostgreSQL is not answering: %s", exc)
        down.append("postgresql")
    try:
        await services.arq.ping()
    except (RedisError, OSError) as exc:
        log.warning("health check: Redis is not answering: %s", exc)
        down.append("redis")
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    return JSONResponse({"status": "ok"})


async def root(request: Request) -> RedirectResponse:
    return RedirectResponse("/graphql")


def create_app(settings: Settings, *,
               query_logger: Callable[[Any], None] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.create_pool(settings, query_logger=query_logger)
        arq = hub = None
        try:
            await db.check_schema(pool)
            arq = await queue.connect(settings.redis_url)
            hub = ProgressHub(settings.redis_url, settings.redis_prefix)
            await hub.start()
            app.state.services = Services(settings=settings, pool=pool, arq=arq,
                                          hub=hub)
            log.info("API ready: database %s, Redis %s", settings.safe_database_url,
                     settings.safe_redis_url)
            yield
        finally:
            if hub is not None:
                await hub.stop()
            if arq is not None:
                await arq.aclose()
            await pool.close()

    graphql = AssayGraphQL(build_schema())
    # A Route and a WebSocketRoute on the same path: a Mount would redirect
    # /graphql to /graphql/, which a websocket cannot follow.
    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/", root),
        ],
        lifespan=lifespan,
    )
