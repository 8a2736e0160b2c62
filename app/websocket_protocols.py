"""The two websocket subprotocols, as Strawberry serves them plus what a
long-lived, public socket needs.

- Keep-alive: pings on graphql-transport-ws (Strawberry sends none there),
  `ka` messages on graphql-ws (Strawberry's own, switched on by the view), so
  proxies that drop silent sockets keep a subscription to a slow run.
- Messages of the wrong shape (not an object, a subscribe without an id or a
  query string) close the socket with 4400, as graphql-transport-ws says,
  instead of failing deep inside Strawberry with a logged traceback.
- A document longer than the HTTP limit is refused the same way.
- A client that vanishes mid-stream is no error: sends to it are dropped and
  the socket's operations end when its read loop notices (with an operation
  that ends at that moment forgotten once, not twice).
- graphql-ws has no deadline for connection_init in Strawberry; here it has
  the same one as graphql-transport-ws.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocketDisconnect
from starlette.websockets import WebSocketDisconnected as SocketClosed
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import (
    BaseGraphQLWSHandler,
)

log = logging.getLogger(__name__)

INIT_TIMEOUT_S = 60.0
# What sending to a client that has gone raises, from Strawberry or Starlette.
_GONE = (WebSocketDisconnected, WebSocketDisconnect, SocketClosed)


def shape_problem(message: Any, start_type: str, stop_type: str,
                  max_query_chars: int) -> str | None:
    """What is wrong with a message's shape, if anything; both protocols."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "a message must be a JSON object with a type"
    if message["type"] == stop_type and not isinstance(message.get("id"), str):
        return f"a {stop_type} message needs an id"
    if message["type"] != start_type:
        return None
    payload = message.get("payload")
    if not isinstance(message.get("id"), str) or not message["id"]:
        return f"a {start_type} message needs an id"
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return f"a {start_type} message needs a payload with a query string"
    if not isinstance(payload.get("variables") or {}, dict):
        return f"the variables of a {start_type} message must be an object"
    if len(payload["query"]) > max_query_chars:
        return (f"the document is {len(payload['query']):,} characters long; at"
                f" most {max_query_chars:,} (ASSAY_MAX_QUERY_CHARS)")
    return None


class TransportWSHandler(BaseGraphQLTransportWSHandler):
    """graphql-transport-ws."""

    _pinger: asyncio.Task[None] | None = None

    async def handle_message(self, message: Any) -> None:
        problem = shape_problem(message, "subscribe", "complete",
                                self.view.max_query_chars)
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._pinger is None:
            self._pinger = asyncio.create_task(self._ping_while_open())

    async def _ping_while_open(self) -> None:
        # Sends to a closed socket are dropped (send_message); shutdown()
        # ends this loop.
        while True:
            await asyncio.sleep(self.view.keepalive_s)
            await self.send_message({"type": "ping"})

    async def send_message(self, message: Any) -> None:
        with contextlib.suppress(*_GONE):
            await super().send_message(message)

    def forget_id(self, id: str) -> None:
        # An operation ending as the socket closes may be forgotten twice:
        # once by the shutdown's clean-up, once by its own final message.
        self.operations.pop(id, None)

    async def shutdown(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        await super().shutdown()


class LegacyWSHandler(BaseGraphQLWSHandler):
    """graphql-ws (subscriptions only)."""

    async def handle(self) -> None:
        deadline = asyncio.create_task(self._close_unless_initialised())
        try:
            await super().handle()
        finally:
            deadline.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deadline

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(INIT_TIMEOUT_S)
        if not self.connection_acknowledged:
            with contextlib.suppress(Exception):
                await self.websocket.close(code=4408,
                                           reason="Connection initialisation timeout")

    async def handle_connection_init(self, message: Any) -> None:
        # Strawberry would start another keep-alive task on each repeat, and
        # keep hold of the last one only.
        if self.connection_acknowledged:
            await self.websocket.close(code=4429,
                                       reason="Too many initialisation requests")
            return
        await super().handle_connection_init(message)

    async def handle_message(self, message: Any) -> None:
        problem = shape_problem(message, "start", "stop", self.view.max_query_chars)
        if problem is not None:
            await self.websocket.close(code=4400, reason=problem)
            return
        await super().handle_message(message)

    async def send_message(self, message: Any) -> None:
        with contextlib.suppress(*_GONE):
            await super().send_message(message)
