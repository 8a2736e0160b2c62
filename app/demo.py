"""`assay demo`: one whole evaluation, from an empty machine to a score per category.

The demo finds or starts PostgreSQL and Redis (see app.services), brings the
database schema up to date, and starts the API, a worker and, unless a real
model is configured, the simulated model as child processes. It then imports
the example test set through the API, runs an evaluation of it while drawing
its live progress from the `evaluationProgress` subscription, prints the
scores per category, and stops everything it started.

The demo is a client like any other: it makes itself an API key (an admin
key of the workspace "demo", expiring in DEMO_KEY_DAYS days) and reaches the
API only over HTTP and a websocket with it, so it exercises the same paths a
user's own client would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

import asyncpg
import httpx2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from app import auth
from app.importer.readers import FieldOptions, ImportFileError, read_test_cases
from app.llm.simulator import MODEL_ID as SIMULATED_MODEL
from app.llm.simulator import SimulatorConfig
from app.services import (
    DEFAULT_DATA_DIR,
    ChildProcess,
    LocalServices,
    ServiceError,
    ensure_services,
    free_port,
    port_is_free,
)
from app.settings import Settings
from app.store import db

log = logging.getLogger(__name__)

T = TypeVar("T")

EXAMPLE_TEST_SET = (Path(__file__).resolve().parents[1] / "examples"
                    / "world-facts.jsonl")
PROMPT_TEMPLATE = "Q: {{ question }}\nA:"
SYSTEM_PROMPT = ("You answer quiz questions. Reply with the answer alone: one"
                 " number or a few words, with no explanation and no full stop.")
EVALUATION_CONCURRENCY = 2
DEMO_WORKSPACE = "demo"
DEMO_KEY_DAYS = 7
READY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
# How long the progress stream may stay silent before the demo gives up.
IDLE_TIMEOUT_S = 120.0
NUM_RECONNECTS = 3
TERMINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")
GRAPHQL_TRANSPORT_WS = Subprotocol("graphql-transport-ws")

CREATE_TEST_SET = """
mutation CreateTestSet($input: CreateTestSetInput!) {
  createTestSet(input: $input) { id name testCaseCount categories { name } }
}"""

CREATE_EVALUATION = """
mutation CreateEvaluation($input: CreateEvaluationInput!) {
  createEvaluation(input: $input) { id status totalCases }
}"""

EVALUATION_PROGRESS = """
subscription Progress($id: ID!, $after: Int) {
  evaluationProgress(evaluationId: $id, afterSequence: $after) {
    sequence kind status totalCases completedCases failedCases score
  }
}"""

EVALUATION_OUTCOME = """
query Outcome($id: ID!) {
  evaluation(id: $id) {
    status error score passRate totalCases completedCases failedCases
    categoryScores {
      category { name testCaseCount } score passRate completedCases
    }
  }
}"""


class DemoError(RuntimeError):
    """A step of the demo failed; the message names it and where to look."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `assay demo` options to a (sub)command's parser."""
    parser.add_argument(
        "--model", metavar="NAME",
        help="the model to evaluate; a real one is called only when "
        "OPENAI_API_KEY or OPENAI_BASE_URL is set (default: the simulated "
        f"model {SIMULATED_MODEL!r})")
    parser.add_argument(
        "--port", type=int, default=8000,
        help="port for the API, or a free one if it is taken (default: "
        "%(default)s)")
    parser.add_argument(
        "--keep-running", action="store_true",
        help="keep the API, worker and simulator up after the evaluation, "
        "until Ctrl-C")
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR,
        help="where logs, and any PostgreSQL or Redis the demo starts, live "
        "(default: %(default)s)")
    parser.add_argument(
        "--accuracy", type=float, default=0.8,
        help="share of answers the simulated model gets right, 0 to 1 "
        "(default: %(default)s)")
    parser.add_argument(
        "--latency-ms", type=float, default=60.0,
        help="mean time the simulated model takes per answer (default: "
        "%(default)s)")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo; the process exit code."""
    _quiet_operator_logs()
    demo = _Demo(args, settings)
    with _sigterm_cancels_this_task() as sigterm:
        try:
            return await demo.run()
        except (DemoError, ServiceError) as error:
            _say(f"\nassay demo failed: {error}")
            return 1
        except asyncio.CancelledError:
            if not sigterm.received:
                raise  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt
            _uncancel_this_task()
            _say("\nStopping on SIGTERM.")
            return 128 + signal.SIGTERM
        finally:
            await demo.stop()


class _Demo:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.data_dir: Path = args.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.services: LocalServices | None = None
        self.children: list[ChildProcess] = []
        self.api: ChildProcess | None = None
        self.worker: ChildProcess | None = None
        # Which child answers at which URL once it is ready.
        self.ready_checks: list[tuple[ChildProcess, str]] = []
        self.api_port = 0
        self.http: httpx2.AsyncClient | None = None
        self.key = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/graphql"

    async def run(self) -> int:
        simulator_config = self._check_arguments()
        _say(f"Assay demo: an evaluation of {_shown(EXAMPLE_TEST_SET)}, from start"
             " to finish.")
        self.settings, self.services = await ensure_services(
            self.settings, self.data_dir, report=_say)
        await self._migrate()
        self.key = await self._make_key()

        model, model_base_url = self._choose_model()
        if model_base_url is None:
            model_base_url = self._start_simulator(simulator_config)
        self._start_api_and_worker(model_base_url)
        _say(f"Logs of the processes the demo started are in {_shown(self.log_dir)}")

        self.http = httpx2.AsyncClient(
            timeout=REQUEST_TIMEOUT_S,
            headers={"Authorization": f"Bearer {self.key}"})
        outcome = await self._while_children_run(self._evaluate(model))
        code = self._print_outcome(outcome, model)

        if self.args.keep_running and code == 0:
            return await self._keep_running()
        _say(f"To explore the evaluation in GraphiQL at {self.api_url}, run the "
             "demo with --keep-running: the API stops now.")
        return code

    async def _make_key(self) -> str:
        pool = await db.create_pool(self.settings, max_size=2,
                                    application_name="assay-demo")
        try:
            row, key = await auth.create_key(
                pool, DEMO_WORKSPACE, auth.ADMIN, name="assay demo",
                expires_at=(datetime.datetime.now(datetime.UTC)
                            + datetime.timedelta(days=DEMO_KEY_DAYS)))
        finally:
            await pool.close()
        _say(f"Made an admin API key of workspace {DEMO_WORKSPACE!r} for the demo"
             f" ({row.key_start}…, expires in {DEMO_KEY_DAYS} days)")
        return key

    async def stop(self) -> None:
        """Stop every child this demo started, then any service it started."""
        if self.http is not None:
            await self.http.aclose()
        if self.children:
            names = [child.name for child in self.children]
            # The worker first: stopping, it finishes the model calls in
            # flight, which needs the simulator still answering.
            workers = [child for child in self.children if child.name == "worker"]
            await asyncio.gather(*(child.stop() for child in workers))
            await asyncio.gather(*(child.stop() for child in self.children
                                   if child not in workers))
            _say(f"Stopped the {', '.join(names[:-1])} and {names[-1]}."
                 if len(names) > 1 else f"Stopped the {names[0]}.")
            self.children = []
        if self.services is not None and self.services.started_anything:
            await self.services.stop()
            _say(f"Stopped the local PostgreSQL and Redis; the database stays in "
                 f"{_shown(self.data_dir)}")
        self.services = None

    # --- Setting up -----------------------------------------------------------

    def _check_arguments(self) -> SimulatorConfig:
        if not EXAMPLE_TEST_SET.is_file():
            raise DemoError(f"the example test set {EXAMPLE_TEST_SET} is missing;"
                            " run the demo from a checkout of Assay")
        try:
            return SimulatorConfig(accuracy=self.args.accuracy,
                                   latency_ms=self.args.latency_ms)
        except ValueError as error:
            raise DemoError(f"bad simulator option: {error}") from None

    async def _migrate(self) -> None:
        try:
            version = await db.migrate(self.settings)
        except (OSError, asyncpg.PostgresError) as error:
            raise DemoError(
                f"could not bring the database at {self.settings.safe_database_url}"
                f" up to date: {error}") from None
        _say(f"Database schema is at version {version}")

    def _choose_model(self) -> tuple[str, str | None]:
        """The model to evaluate, and the endpoint of a real one (None: start
        the simulator)."""
        wanted = self.args.model
        configured = self.settings.openai_api_key or self.settings.openai_base_url
        if wanted and configured:
            _say(f"Evaluating {wanted} at {self.settings.model_base_url}")
            return wanted, self.settings.model_base_url
        if wanted:
            _say(f"Neither OPENAI_API_KEY nor OPENAI_BASE_URL is set, so the "
                 f"simulated model answers as {wanted!r}")
        return wanted or SIMULATED_MODEL, None

    def _child_env(self, model_base_url: str) -> dict[str, str]:
        # Known shortcoming: the demo's worker shares the queue of this Redis
        # prefix. Another `assay worker` already running on the same Redis and
        # prefix may take the demo's evaluation and call its own model
        # endpoint; setting ASSAY_REDIS_PREFIX for the demo keeps them apart.
        env = dict(os.environ)
        env.update(DATABASE_URL=self.settings.database_url,
                   REDIS_URL=self.settings.redis_url,
                   ASSAY_REDIS_PREFIX=self.settings.redis_prefix,
                   OPENAI_BASE_URL=model_base_url)
        return env

    def _start_simulator(self, config: SimulatorConfig) -> str:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        child = self._start_child(
            "simulator",
            ["simulator", "--port", str(port), "--accuracy", str(config.accuracy),
             "--latency-ms", str(config.latency_ms)],
            self._child_env(base_url))
        self.ready_checks.append((child, f"{base_url}/models"))
        _say(f"Started the simulated model at {base_url}: it gets about "
             f"{config.accuracy:.0%} of the answers right, in about "
             f"{config.latency_ms:g} ms each")
        return base_url

    def _start_api_and_worker(self, model_base_url: str) -> None:
        env = self._child_env(model_base_url)
        self.api_port = self.args.port
        if not port_is_free(self.api_port):
            self.api_port = free_port()
            _say(f"Port {self.args.port} is taken, so the API uses port "
                 f"{self.api_port}")
        self.api = self._start_child(
            "API", ["serve", "--port", str(self.api_port)], env)
        self.ready_checks.append(
            (self.api, f"http://127.0.0.1:{self.api_port}/healthz"))
        self.worker = self._start_child("worker", ["worker"], env)
        _say(f"Started the API at {self.api_url} and a worker")

    def _start_child(self, name: str, assay_args: list[str],
                     env: Mapping[str, str]) -> ChildProcess:
        log_path = self.log_dir / f"{name.lower()}.log"
        try:
            child = ChildProcess.start(name, [*_assay_command(), *assay_args],
                                       log_path, env)
        except OSError as error:
            raise DemoError(f"could not start the {name}: {error}") from None
        self.children.append(child)
        return child

    # --- The evaluation -----------------------------------------------------

    async def _evaluate(self, model: str) -> dict[str, Any]:
        await asyncio.gather(*(self._wait_until_ready(child, url)
                               for child, url in self.ready_checks))
        test_set = await self._create_test_set()
        _say(f"Created the test set {test_set['name']!r} with "
             f"{test_set['testCaseCount']} test cases in "
             f"{len(test_set['categories'])} categories")

        evaluation = (await self._graphql(
            "createEvaluation", CREATE_EVALUATION, {"input": {
                "testSetId": test_set["id"],
                "name": "Demo run",
                "model": model,
                "promptTemplate": PROMPT_TEMPLATE,
                "systemPrompt": SYSTEM_PROMPT,
                "temperature": 0.0,
                "maxTokens": 16,
                "scorer": {"type": "EXACT_MATCH", "options": {"ignoreCase": True}},
                "concurrency": EVALUATION_CONCURRENCY,
            }}))["createEvaluation"]
        _say(f"Evaluating {model} on {evaluation['totalCases']} test cases "
             f"(evaluation {evaluation['id']}):")

        started_s = time.monotonic()
        await self._follow_progress(evaluation["id"], evaluation["totalCases"])
        outcome = (await self._graphql("evaluation", EVALUATION_OUTCOME,
                                       {"id": evaluation["id"]}))["evaluation"]
        outcome["id"] = evaluation["id"]
        outcome["testSetName"] = test_set["name"]
        outcome["elapsedS"] = time.monotonic() - started_s
        return outcome

    async def _wait_until_ready(self, child: ChildProcess, url: str) -> None:
        assert self.http is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                response = await self.http.get(url, timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx2.TransportError as error:
                last = str(error) or type(error).__name__
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the {child.name} did not answer at {url} within "
                    f"{READY_TIMEOUT_S:.0f} s ({last}); its log is "
                    f"{_shown(child.log_path)}")
            await asyncio.sleep(0.2)

    async def _create_test_set(self) -> dict[str, Any]:
        try:
            test_cases = list(read_test_cases(EXAMPLE_TEST_SET, "jsonl",
                                              FieldOptions()))
        except (ImportFileError, OSError) as error:
            raise DemoError(f"could not read the example test set: {error}") from None

        name = f"World facts (demo {datetime.datetime.now():%Y-%m-%d %H:%M:%S})"
        for attempt in range(1, 4):
            # Names are unique; two demos started within a second need two.
            try_name = name if attempt == 1 else f"{name} #{attempt}"
            try:
                data = await self._graphql(
                    "createTestSet", CREATE_TEST_SET,
                    {"input": {"name": try_name,
                               "description": "Assay's example test set, "
                               "imported by `assay demo`.",
                               "testCases": test_cases}},
                    conflict_ok=True)
            except _Conflict:
                continue
            return data["createTestSet"]
        raise DemoError(f"createTestSet failed: the name {name!r} is taken")

    async def _graphql(self, operation: str, query: str, variables: dict[str, Any],
                       *, conflict_ok: bool = False) -> dict[str, Any]:
        assert self.http is not None and self.api is not None
        where = f"; the API's log is {_shown(self.api.log_path)}"
        try:
            response = await self.http.post(
                self.api_url, json={"query": query, "variables": variables})
            body = response.json()
        except httpx2.HTTPError as error:
            raise DemoError(f"{operation} failed: cannot reach the API at "
                            f"{self.api_url} ({error}){where}") from None
        except ValueError:
            raise DemoError(f"{operation} failed: the API answered HTTP "
                            f"{response.status_code} without JSON{where}") from None

        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            if conflict_ok and _error_code(errors[0]) == "CONFLICT":
                raise _Conflict()
            raise DemoError(f"{operation} failed: {_describe_error(errors[0])}{where}")
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise DemoError(f"{operation} failed: the API answered HTTP "
                            f"{response.status_code} without data{where}")
        return body["data"]

    async def _follow_progress(self, evaluation_id: str, total_cases: int) -> None:
        """Draw the evaluation's progress until it ends, reconnecting with
        afterSequence if the websocket drops."""
        assert self.worker is not None and self.api is not None
        bar = _ProgressBar(sys.stderr, total_cases)
        ws_url = self.api_url.replace("http://", "ws://", 1)
        last_sequence: int | None = None
        num_reconnects = 0
        try:
            while True:
                try:
                    async with contextlib.aclosing(_subscribe(
                            ws_url, self.key, EVALUATION_PROGRESS,
                            {"id": evaluation_id, "after": last_sequence})) as events:
                        async for event in events:
                            last_sequence = event["sequence"]
                            bar.show(event)
                    return
                except _NoProgress:
                    raise DemoError(
                        f"the evaluation made no progress for {IDLE_TIMEOUT_S:.0f} s;"
                        f" see the worker's log {_shown(self.worker.log_path)}"
                    ) from None
                except (OSError, ConnectionClosed, InvalidHandshake) as error:
                    if num_reconnects == NUM_RECONNECTS:
                        raise DemoError(
                            f"lost the progress subscription at {ws_url}: {error};"
                            f" the API's log is {_shown(self.api.log_path)}") from None
                    num_reconnects += 1
                    log.warning("progress subscription dropped (%s); reconnecting",
                                error)
                    await asyncio.sleep(0.5)
        finally:
            bar.end()

    # --- Reporting and waiting ------------------------------------------------

    def _print_outcome(self, outcome: dict[str, Any], model: str) -> int:
        status = outcome["status"]
        print(f"\n{outcome['testSetName']}: {model} scored "
              f"{_score(outcome['score'])} on {outcome['totalCases']} test cases; "
              f"evaluation {outcome['id']} {status} in {outcome['elapsedS']:.1f} s\n")
        rows = [(score["category"]["name"], score["category"]["testCaseCount"],
                 score["score"], score["passRate"])
                for score in outcome["categoryScores"]]
        rows.append(("overall", outcome["totalCases"], outcome["score"],
                     outcome["passRate"]))
        width = max(len("category"), *(len(row[0]) for row in rows))
        print(f"  {'category':<{width}}  {'cases':>5}  {'score':>5}  {'pass rate':>9}")
        for name, num_cases, score, pass_rate in rows:
            print(f"  {name:<{width}}  {num_cases:>5}  {_score(score):>5}  "
                  f"{_percent(pass_rate):>9}")
        print()

        assert self.worker is not None
        if outcome["failedCases"]:
            _say(f"{outcome['failedCases']} test cases got an error instead of an "
                 f"answer; see the worker's log {_shown(self.worker.log_path)}")
        if status != "COMPLETED":
            _say(f"The evaluation ended {status}: {outcome['error'] or 'no reason'};"
                 f" see the worker's log {_shown(self.worker.log_path)}")
            return 1
        return 0

    async def _keep_running(self) -> int:
        _say(f"The API stays up at {self.api_url}, with the worker and model;"
             " press Ctrl-C to stop them.\n"
             f"To use GraphiQL, open {self.api_url} in a browser and paste this"
             " into its Headers tab (bottom left):\n"
             f'  {{"Authorization": "Bearer {self.key}"}}\n'
             "Scripts send the same header; websocket clients send"
             f' {{"authorization": "Bearer {self.key}"}} as the connection_init'
             " payload.")
        try:
            await self._while_children_run(asyncio.Event().wait())
        except asyncio.CancelledError:
            # Ctrl-C (or SIGTERM) is how a kept-running demo is meant to end.
            _uncancel_this_task()
            _say("\nStopping.")
        return 0

    async def _while_children_run(self, work: Awaitable[T]) -> T:
        """Await `work`, failing as soon as any child exits."""
        work_task = asyncio.ensure_future(work)
        watch_task = asyncio.ensure_future(self._watch_children())
        try:
            done, _ = await asyncio.wait({work_task, watch_task},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work_task, watch_task):
                task.cancel()
            await asyncio.wait({work_task, watch_task})
        if watch_task in done and not watch_task.cancelled():
            if work_task.done() and not work_task.cancelled():
                work_task.exception()  # retrieved; the child's exit explains it
            watch_task.result()
        return work_task.result()

    async def _watch_children(self) -> None:
        while True:
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    raise DemoError(
                        f"the {child.name} exited with code {code}; the end of its "
                        f"log {_shown(child.log_path)}:\n{_indent(child.log_tail())}")
            await asyncio.sleep(0.25)


class _Conflict(Exception):
    """The API refused a name as taken."""


class _NoProgress(Exception):
    """The progress stream stayed silent for IDLE_TIMEOUT_S."""


# --- graphql-transport-ws -------------------------------------------------------


async def _subscribe(url: str, key: str, query: str,
                     variables: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The events of one subscription over the graphql-transport-ws protocol.

    The protocol: connection_init, answered by connection_ack; then subscribe
    with an id, answered by `next` messages and a final `complete` (or an
    `error`). Either side may send `ping`, which must be answered by `pong`.
    """
    async with connect(url, subprotocols=[GRAPHQL_TRANSPORT_WS],
                       open_timeout=REQUEST_TIMEOUT_S) as ws:
        await _send(ws, {"type": "connection_init",
                         "payload": {"authorization": f"Bearer {key}"}})
        ack = await _receive(ws, REQUEST_TIMEOUT_S)
        if ack.get("type") != "connection_ack":
            raise DemoError(f"the API answered connection_init with {ack!r}")

        await _send(ws, {"id": "1", "type": "subscribe",
                         "payload": {"query": query, "variables": variables}})
        while True:
            try:
                message = await _receive(ws, IDLE_TIMEOUT_S)
            except TimeoutError:
                raise _NoProgress() from None
            kind = message.get("type")
            if kind == "next":
                payload = message.get("payload") or {}
                if payload.get("errors"):
                    raise DemoError("the progress subscription failed: "
                                    f"{_describe_error(payload['errors'][0])}")
                yield payload["data"]["evaluationProgress"]
            elif kind == "error":
                errors = message.get("payload") or [{}]
                raise DemoError("the progress subscription was refused: "
                                f"{_describe_error(errors[0])}")
            elif kind == "complete":
                return


async def _send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def _receive(ws: ClientConnection, timeout_s: float) -> dict[str, Any]:
    """The next message that is not a ping or pong; pings are answered."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout_s)
        message = json.loads(raw)
        if message.get("type") == "ping":
            await _send(ws, {"type": "pong"})
        elif message.get("type") != "pong":
            return message


# --- Output ---------------------------------------------------------------------


class _ProgressBar:
    """One line redrawn in place on a terminal; elsewhere (a log, a pipe) a
    line for every tenth of the way."""

    WIDTH = 30
    REDRAW_INTERVAL_S = 0.05

    def __init__(self, stream: TextIO, total_cases: int) -> None:
        self.stream = stream
        self.total_cases = total_cases
        self.is_tty = stream.isatty()
        self._last_tenth = -1
        self._ended = False
        self._drawn_at = 0.0
        self._drawn = False
        encoding = (getattr(stream, "encoding", None) or "").lower()
        self._full, self._empty = ("█", "░") if "utf" in encoding else ("#", "-")

    def show(self, event: dict[str, Any]) -> None:
        total = event["totalCases"] or self.total_cases or 1
        done = event["completedCases"]
        final = event["status"] in TERMINAL_STATUSES or done >= total
        line = self._line(event, done, total)
        if self.is_tty:
            now = time.monotonic()
            if final or now - self._drawn_at >= self.REDRAW_INTERVAL_S:
                self.stream.write(f"\r{line}\x1b[K")
                self.stream.flush()
                self._drawn_at, self._drawn = now, True
            return
        tenth = done * 10 // total
        ended = event["status"] in TERMINAL_STATUSES
        if tenth > self._last_tenth or (ended and not self._ended):
            self._last_tenth, self._ended = tenth, ended
            self.stream.write(line + "\n")
            self.stream.flush()

    def end(self) -> None:
        if self.is_tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _line(self, event: dict[str, Any], done: int, total: int) -> str:
        filled = self.WIDTH * done // total
        bar = self._full * filled + self._empty * (self.WIDTH - filled)
        failed = f"  errors {event['failedCases']}" if event["failedCases"] else ""
        return (f"  [{bar}] {done:>{len(str(total))}}/{total} "
                f"{100 * done // total:>3}%  score {_score(event['score'])}"
                f"{failed}  {event['status']}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _shown(path: Path) -> str:
    """`path` relative to the current directory when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _error_code(error: Any) -> str | None:
    extensions = error.get("extensions") if isinstance(error, dict) else None
    return extensions.get("code") if isinstance(extensions, dict) else None


def _describe_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    message = str(error.get("message") or "no message")
    code = _error_code(error)
    return f"{message} [{code}]" if code else message


def _assay_command() -> list[str]:
    """The `assay` command of this same installation."""
    script = Path(sys.executable).with_name("assay")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


def _quiet_operator_logs() -> None:
    # The demo tells the user what happens in its own words; the INFO lines of
    # these loggers are for operators of long-running processes. With
    # --log-level DEBUG they show as usual.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("app", "httpx2", "websockets"):
            logging.getLogger(name).setLevel(logging.WARNING)


class _Signal:
    received = False


@contextlib.contextmanager
def _sigterm_cancels_this_task() -> Iterator[_Signal]:
    """Make SIGTERM stop the demo as Ctrl-C does, children and all."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    sigterm = _Signal()

    def on_sigterm() -> None:
        sigterm.received = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):
        yield sigterm  # not the main thread, or no signals here: the default
        return
    try:
        yield sigterm
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _uncancel_this_task() -> None:
    # The cancellation was a request to stop, now handled: the task goes on to
    # clean up and return an exit code like any other.
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
