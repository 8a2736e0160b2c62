"""Open websockets by the API key they were opened with.

A revoked or expired key must lose its live streams, not only its next
request. The API process keeps every authenticated websocket here and checks
all their keys every ASSAY_KEY_CHECK_S seconds in one query, so a key revoked
anywhere (`assay keys revoke`, another API process) ends its sockets within
that time; a key revoked through this process's own API ends them at once.
A socket whose key is no longer valid is closed with 4403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import asyncpg
from starlette.websockets import WebSocket

from app.auth import Caller
from app.store import api_keys as key_store
from app.store import db

log = logging.getLogger(__name__)

CLOSE_KEY_NO_LONGER_VALID = 4403


class OpenConnections:
    """The authenticated websockets of one API process, by key."""

    def __init__(self, pool: asyncpg.Pool, check_s: float) -> None:
        self._pool = pool
        self._check_s = check_s
        self._by_key: dict[int, set[WebSocket]] = defaultdict(set)
        self._key_of: dict[WebSocket, int] = {}

    def add(self, caller: Caller, websocket: WebSocket) -> None:
        """Remember a websocket its caller's key has just opened."""
        if caller.key_id is None:
            return  # authentication is off: there is no key to lose
        self._by_key[caller.key_id].add(websocket)
        self._key_of[websocket] = caller.key_id

    def discard(self, websocket: WebSocket) -> None:
        """Forget a websocket that has closed (whatever closed it)."""
        key_id = self._key_of.pop(websocket, None)
        if key_id is None:
            return
        sockets = self._by_key[key_id]
        sockets.discard(websocket)
        if not sockets:
            del self._by_key[key_id]

    async def end(self, key_id: int) -> None:
        """Close every socket opened with this key."""
        sockets = self._by_key.pop(key_id, set())
        if sockets:
            log.info("API key %s is no longer valid: closing its %d open"
                     " websocket(s)", key_id, len(sockets))
        for websocket in sockets:
            self._key_of.pop(websocket, None)
            # The client may have gone already.
            with contextlib.suppress(Exception):
                await websocket.close(code=CLOSE_KEY_NO_LONGER_VALID,
                                      reason="API key revoked or expired")

    def __len__(self) -> int:
        """How many websockets are open with a key."""
        return len(self._key_of)

    async def watch(self) -> None:
        """Until cancelled: end the sockets of keys that stop being valid.
        Nothing but cancelling ends it: a failed check is logged and the next
        one comes as usual, since a watch that died would leave revoked keys
        streaming for good."""
        while True:
            await asyncio.sleep(self._check_s)
            if not self._by_key:
                continue
            try:
                gone = await key_store.no_longer_valid(self._pool,
                                                       list(self._by_key))
            except db.UNAVAILABLE as exc:
                log.warning("could not check the keys of open websockets: %s", exc)
                continue
            except Exception:
                log.exception("could not check the keys of open websockets")
                continue
            for key_id in gone:
                await self.end(key_id)
