"""Running Assay's processes inside the test run, on loopback ports.

The API, the worker and the simulator run as they do in production (uvicorn
on a real port, an arq worker on the real Redis), only in the test's event
loop, so tests reach them over real HTTP and websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import uvicorn

from app import auth
from app.jobs.worker import build_worker
from app.llm.simulator import SimulatorConfig, create_simulator_app
from app.server import create_app, server_options
from app.settings import Settings
from app.store import db


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_config=None, lifespan="on",
                                           **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def simulator(database_url: str, config: SimulatorConfig) -> AsyncIterator[str]:
    """A simulated model; yields its OpenAI base URL (ending in /v1)."""
    async with serving(create_simulator_app(database_url, config)) as url:
        yield f"{url}/v1"


@contextlib.asynccontextmanager
async def worker(settings: Settings, *,
                 max_evaluations: int = 4) -> AsyncIterator[None]:
    arq_worker = build_worker(settings, max_evaluations=max_evaluations,
                              handle_signals=False)
    task = asyncio.create_task(arq_worker.async_run())
    try:
        yield
    finally:
        # A test may end the moment a run is recorded as finished, while its
        # job is still releasing its lock: let running jobs end first.
        for _ in range(100):
            if all(job.done() for job in arq_worker.tasks.values()):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await arq_worker.close()


class GraphQLError(AssertionError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors

    @property
    def code(self) -> str:
        return self.errors[0]["extensions"]["code"]

    @property
    def message(self) -> str:
        return self.errors[0]["message"]


async def make_key(settings: Settings, workspace: str, role: str = "admin",
                   **options: Any) -> str:
    """A new API key, made as `assay keys create` makes one."""
    pool = await db.create_pool(settings, max_size=2)
    try:
        _, key = await auth.create_key(pool, workspace, role, **options)
    finally:
        await pool.close()
    return key


@dataclasses.dataclass
class Stack:
    """An API and a worker sharing one settings object. `http` sends `key`
    (an admin key of the workspace "tests") with every request."""

    settings: Settings
    url: str
    http: httpx2.AsyncClient
    app: Any = None
    key: str | None = None

    @property
    def init_payload(self) -> dict[str, str]:
        """The websocket connection_init payload that authenticates `key`."""
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def ws_url(self) -> str:
        return self.graphql_url.replace("http://", "ws://")

    async def query(self, document: str, **variables: Any) -> dict[str, Any]:
        """Run a query or mutation; raises GraphQLError if it has errors."""
        return await self.query_as(self.key, document, **variables)

    async def query_as(self, key: str | None, document: str,
                       **variables: Any) -> dict[str, Any]:
        """Run a query or mutation with another key (None: none at all)."""
        request = {"json": {"query": document, "variables": variables}}
        if key is not None:
            response = await self.http.post(
                self.graphql_url, headers={"Authorization": f"Bearer {key}"},
                **request)
        else:
            async with httpx2.AsyncClient(timeout=30) as bare:
                response = await bare.post(self.graphql_url, **request)
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(body["errors"])
        return body["data"]

    async def wait_for_status(self, evaluation_id: str, *statuses: str,
                              timeout_s: float = 60) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            data = await self.query(
                "query($id: ID!) { evaluation(id: $id) { status completedCases"
                " failedCases totalCases score passRate error } }", id=evaluation_id)
            evaluation = data["evaluation"]
            if evaluation["status"] in statuses:
                return evaluation
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"evaluation stuck at {evaluation}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings, *, with_worker: bool = True,
                        max_evaluations: int = 4,
                        query_logger: Any = None) -> AsyncIterator[Stack]:
    async with contextlib.AsyncExitStack() as stack:
        app = create_app(settings, query_logger=query_logger)
        url = await stack.enter_async_context(
            serving(app, **server_options(settings)))
        if with_worker:
            await stack.enter_async_context(
                worker(settings, max_evaluations=max_evaluations))
        key = (await make_key(settings, "tests") if settings.auth_enabled
               else None)
        http = await stack.enter_async_context(httpx2.AsyncClient(
            timeout=30, headers={"Authorization": f"Bearer {key}"} if key else {}))
        yield Stack(settings=settings, url=url, http=http, app=app, key=key)
