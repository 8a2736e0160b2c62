"""The API process: the GraphQL schema, the Starlette app and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import strawberry
from cross_web import HTTPException
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import (
    create_validator as depth_rule,
)
from strawberry.schema.exceptions import InvalidOperationTypeError

from app import auth
from app.connections import OpenConnections
from app.context import Context, Services, SharedTestCases
from app.errors import ApiError
from app.events import ProgressHub
from app.jobs import queue
from app.resolvers import Mutation, Query, Subscription
from app.settings import Settings
from app.store import db
from app.websocket_protocols import LegacyWSHandler, TransportWSHandler

log = logging.getLogger(__name__)

# Where an HTTP request's caller waits in its ASGI scope for get_context.
_CALLER = "assay.caller"


class _Schema(strawberry.Schema):
    """The schema, with every error given its `extensions.code` in one place.

    Strawberry hands every list of errors here (parse, validation, execution
    and each subscription event) before it answers, so coding them in place
    reaches every path. Errors about the request itself (syntax, unknown
    fields, wrong variable types, limits) come from graphql-core with no
    original error: they are the client's, and keep their message as
    BAD_USER_INPUT. Anything else that is not an ApiError is logged once here
    and its message replaced, so no trace or secret reaches a client.
    """

    def process_errors(self, errors: list[GraphQLError],
                       execution_context: object = None) -> None:
        for error in errors:
            _code(error)


def _code(error: GraphQLError) -> None:
    if "code" in (error.extensions or {}):
        return
    original = error.original_error
    while isinstance(original, GraphQLError):
        original = original.original_error

    if original is None:
        code = "BAD_USER_INPUT"
    elif isinstance(original, ApiError):
        error.message, code = original.message, original.code
    elif isinstance(original, TypeError) and _is_subscription_over_http(error):
        error.message = ("subscriptions are served over websockets"
                         " (graphql-transport-ws or graphql-ws), not HTTP")
        code = "BAD_USER_INPUT"
    elif isinstance(original, db.UNAVAILABLE):
        # Not the client's fault and not a bug: say so, so that it retries.
        log.warning("%s: PostgreSQL is unavailable (%s)",
                    ".".join(map(str, error.path or [])) or "a request",
                    type(original).__name__)
        error.message = ("the API cannot answer now: its database is"
                         " unavailable; try again shortly")
        code = "INTERNAL_SERVER_ERROR"
        error.original_error = None
    elif isinstance(original, InvalidOperationTypeError):
        error.message = ("the graphql-ws subprotocol carries subscriptions only;"
                         " send queries and mutations over HTTP or"
                         " graphql-transport-ws")
        code = "BAD_USER_INPUT"
    else:
        log.error("unexpected error in %s", ".".join(map(str, error.path or [])),
                  exc_info=original)
        error.message, code = "Internal server error.", "INTERNAL_SERVER_ERROR"
        error.original_error = None
    error.extensions = {**(error.extensions or {}), "code": code}


def _is_subscription_over_http(error: GraphQLError) -> bool:
    # Strawberry runs a subscription sent over HTTP as if it were a query, and
    # the root field's async generator then fails as a null.
    return (error.message.startswith("Cannot return null for non-nullable field"
                                     " Subscription."))


def server_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn is to serve the API, beyond where."""
    return {
        "ws_ping_interval": 20,
        # Compressing every small progress message cost more of the API's
        # time than sending it whole.
        "ws_per_message_deflate": False,
        # A websocket message is held to the HTTP body limit too (uvicorn
        # closes the socket with 1009 beyond it).
        "ws_max_size": settings.max_request_bytes,
    }


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    settings = settings or Settings()
    # The limits' rules are made once: the validation cache is keyed by the
    # document and the rule classes, and Strawberry's own limiter extensions
    # make new classes for every request, so nothing was ever found in it.
    rules = [depth_rule(settings.max_query_depth, None),
             aliases_rule(settings.max_query_aliases)]
    if not settings.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions = [
        # Parsing and validating a document costs more than running a
        # small query; the caches make repeated documents nearly free.
        # Keyed by the whole document, which ASSAY_MAX_QUERY_CHARS bounds.
        lambda: ParserCache(maxsize=200),
        lambda: ValidationCache(maxsize=200),
        lambda: AddValidationRules(rules),
        lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
    ]
    return _Schema(query=Query, mutation=Mutation, subscription=Subscription,
                   extensions=extensions)


class AssayGraphQL(GraphQL):
    """The GraphQL endpoint: every operation authenticated, with Assay's
    context.

    HTTP requests are authenticated before Strawberry sees them (only the
    GraphiQL page itself is served without a key: it holds no data, and the
    key is typed into its headers). Websockets are authenticated at
    connection_init, which both subprotocols send before any operation.
    """

    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, schema: strawberry.Schema, settings: Settings) -> None:
        # graphql-ws has its own keep-alive messages; Strawberry sends them.
        # Strawberry checks a websocket's Origin against allowed_origins (a
        # browser page elsewhere must be on the list, as for CORS).
        super().__init__(schema, keep_alive=True,
                         keep_alive_interval=settings.ws_keepalive_s,
                         graphql_ide="graphiql" if settings.graphiql else None,
                         allowed_origins=settings.cors_origins)
        self.keepalive_s = settings.ws_keepalive_s
        self.max_query_chars = settings.max_query_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._is_ide_page(Request(scope)):
            services: Services = scope["app"].state.services
            try:
                scope[_CALLER] = await _caller_of(
                    services, Request(scope).headers.get("authorization"))
            except auth.KeyRefused as refused:
                await _unauthenticated(str(refused))(scope, receive, send)
                return
            except db.UNAVAILABLE as exc:
                log.warning("cannot check an API key: PostgreSQL is unavailable"
                            " (%s)", exc)
                await _keys_unavailable()(scope, receive, send)
                return
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            # Gone before its request body arrived: there is no one to answer.
            log.info("a client left before sending its whole request")

    def _is_ide_page(self, request: Request) -> bool:
        # As Strawberry decides to serve GraphiQL: a browser's plain GET.
        return (request.method == "GET" and "query" not in request.query_params
                and "text/html" in request.headers.get("accept", ""))

    async def on_ws_connect(self, context: Context) -> dict[str, object]:
        params = context.connection_params or {}
        header = params.get("authorization") or params.get("Authorization")
        if header is None and params.get("apiKey") is not None:
            header = f"Bearer {params['apiKey']}"
        try:
            if header is not None and not isinstance(header, str):
                raise auth.KeyRefused("authorization must be a string")
            # Read, never remembered: a socket lives on, and its key must be
            # as fresh as the key check that watches it assumes.
            caller = await _caller_of(context.services, header, remembered=False)
        except auth.KeyRefused as refused:
            log.info("websocket refused: %s", refused)
            raise ConnectionRejectionError(
                {"message": str(refused), "code": "UNAUTHENTICATED"}) from None
        except db.UNAVAILABLE as exc:
            # Not the client's fault, so not a 4403: 1011 tells it to retry.
            log.warning("cannot check an API key: PostgreSQL is unavailable"
                        " (%s)", exc)
            await context.request.close(code=1011,
                                        reason="keys cannot be checked now")
            return {}
        context.caller = caller
        context.services.connections.add(caller, context.request)
        return {"workspace": caller.workspace, "role": caller.role}

    async def run(self, request: Any, context: Any = None,
                  root_value: Any = None) -> Any:
        if not isinstance(request, WebSocket):
            return await super().run(request)
        try:
            return await super().run(request)
        finally:
            request.app.state.services.connections.discard(request)

    async def parse_http_body(self, request: Any) -> Any:
        data = await super().parse_http_body(request)
        for operation in data if isinstance(data, list) else [data]:
            # Whitespace and comments cost no tokens but still cost parsing,
            # and the parser cache keeps whole documents.
            if operation.query and len(operation.query) > self.max_query_chars:
                raise HTTPException(
                    400, f"the document is {len(operation.query):,} characters"
                    f" long; at most {self.max_query_chars:,}"
                    " (ASSAY_MAX_QUERY_CHARS): send data in variables")
        return data

    def decode_json(self, data: str | bytes) -> object:
        # Also used for websocket messages, where Strawberry closes the socket
        # with 4400 on a JSONDecodeError and on nothing else.
        try:
            return super().decode_json(data)
        except (RecursionError, ValueError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            raise json.JSONDecodeError(str(exc), str(data)[:100], 0) from exc

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return json.loads(data)
        except RecursionError as exc:
            raise HTTPException(
                400, "the request body is JSON nested too deeply to read") from exc
        except UnicodeDecodeError as exc:
            raise HTTPException(400, "the request body is not UTF-8") from exc
        except json.JSONDecodeError as exc:
            raise HTTPException(
                400, f"the request body is not valid JSON: {exc.msg} at line"
                f" {exc.lineno}, column {exc.colno}") from exc
        except ValueError as exc:
            # Python refuses integers of more than 4,300 digits.
            raise HTTPException(
                400, f"the request body is JSON that cannot be read: {exc}") from exc

    async def get_context(self, request: Request | WebSocket,
                          response: Response | WebSocket) -> Context:
        return Context(services=request.app.state.services, request=request,
                       caller=request.scope.get(_CALLER))


async def _caller_of(services: Services, authorization: str | None, *,
                     remembered: bool = True) -> auth.Caller:
    if not services.settings.auth_enabled:
        return services.unauthenticated_caller
    return await auth.authenticate(services.pool, auth.presented_key(authorization),
                                   services.recent_keys if remembered else None)


def _keys_unavailable() -> JSONResponse:
    return JSONResponse(
        {"errors": [{"message": "the API cannot check keys now: its database is"
                     " unavailable; try again shortly",
                     "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
        status_code=503, headers={"Retry-After": "5"})


def _unauthenticated(message: str) -> JSONResponse:
    return JSONResponse(
        {"errors": [{"message": message,
                     "extensions": {"code": "UNAUTHENTICATED"}}]},
        status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def healthz(request: Request) -> JSONResponse:
    """200 only when PostgreSQL and Redis both answer; 503 naming what is down."""
    services: Services = request.app.state.services
    down = []
    try:
        async with services.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except Exception as exc:
        log.warning("health check: PostgreSQL is not answering: %s", exc)
        down.append("postgresql")
    try:
        await asyncio.wait_for(services.arq.ping(), timeout=2)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("health check: Redis is not answering: %s", exc)
        down.append("redis")
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    return JSONResponse({"status": "ok"})


class RequestSizeLimit:
    """Answers 413 to a request whose body grows past `max_bytes`, before the
    body is parsed; chunked bodies are counted as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"errors": [{"message": f"the request body is larger than"
                         f" {self.max_bytes} bytes (ASSAY_MAX_REQUEST_BYTES)",
                         "extensions": {"code": "BAD_USER_INPUT"}}]},
            status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


async def root(request: Request) -> RedirectResponse:
    return RedirectResponse("/graphql")


def create_app(settings: Settings, *,
               query_logger: Callable[[Any], None] | None = None) -> Starlette:
    _keep_keys_out_of_logs()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.create_pool(settings, query_logger=query_logger,
                                    application_name="assay-api")
        arq = hub = key_watch = None
        try:
            await db.check_schema(pool)
            arq = await queue.connect(settings.redis_url)
            hub = ProgressHub(settings.redis_url, settings.redis_prefix)
            await hub.start()
            connections = OpenConnections(pool, settings.key_check_s)
            key_watch = asyncio.create_task(connections.watch())
            app.state.services = Services(
                settings=settings, pool=pool, arq=arq,
                test_cases=SharedTestCases(pool), hub=hub, connections=connections,
                recent_keys=auth.RecentKeys(settings.key_check_s),
                unauthenticated_caller=(None if settings.auth_enabled else
                                        await auth.unauthenticated_caller(pool)))
            _log_security(settings)
            log.info("API ready: database %s, Redis %s", settings.safe_database_url,
                     settings.safe_redis_url)
            yield
        finally:
            if key_watch is not None:
                key_watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await key_watch
            if hub is not None:
                await hub.stop()
            if arq is not None:
                await arq.aclose()
            await pool.close()

    graphql = AssayGraphQL(build_schema(settings), settings)
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
        middleware=[
            # Outermost, so that a preflight is answered before anything else
            # and refusals (413, 401) still carry the CORS headers a browser
            # needs to show them to the page.
            Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type"],
                       max_age=600),
            Middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes),
        ],
    )


def _keep_keys_out_of_logs() -> None:
    for name, kinds in (("uvicorn.error", (_NoWireDumps, _NoQueryStrings)),
                        ("uvicorn.access", (_NoQueryStrings,))):
        logger = logging.getLogger(name)
        for kind in kinds:
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())


class _NoQueryStrings(logging.Filter):
    """Leaves the query string out of the paths uvicorn logs for each request
    and websocket: the API takes keys only in headers, but a client that puts
    one in the URL (or a GET query holding test data) should not have it
    written to the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(arg) for arg in record.args)
        return True


def _without_query(arg: object) -> object:
    if isinstance(arg, str) and arg.startswith("/") and "?" in arg:
        return arg.split("?", 1)[0] + "?..."
    return arg


class _NoWireDumps(logging.Filter):
    """Drops the websockets library's DEBUG dumps of what crosses the wire
    (handshake headers, then every frame, logged by uvicorn's websocket
    server as "uvicorn.error"): a connection_init frame, or an Authorization
    header on the handshake, holds an API key."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.DEBUG and isinstance(record.msg, str)
                    and record.msg.startswith(("< ", "> ")))


def _log_security(settings: Settings) -> None:
    if not settings.auth_enabled:
        banner = "!" * 72
        log.warning(banner)
        log.warning("AUTHENTICATION IS OFF (ASSAY_AUTH=off): every request, from"
                    " anyone who can reach this port, acts as an admin of the"
                    " workspace 'default'. Never run it this way where others"
                    " can connect.")
        log.warning(banner)
    log.info("browser origins allowed (ASSAY_CORS_ORIGINS): %s; introspection %s;"
             " GraphiQL %s",
             ", ".join(settings.cors_origins) or "none",
             "on" if settings.introspection else "off",
             "on" if settings.graphiql else "off")
