"""`assay simulator`: a simulated OpenAI-compatible model that knows the test cases.

The simulator answers `POST /v1/chat/completions` and `GET /v1/models` well
enough for the openai client, so an evaluation can run end to end without a
real model. It reads the test cases of the database it is pointed at and
recognises which one a prompt was rendered from: a template puts a test case's
`input` values into the prompt, string values verbatim and other values as
Python (and Jinja) print them.

For a recognised test case it gives the expected output with probability
`accuracy`, and otherwise a plausibly wrong one: the same text with its final
number changed, or another test case's expected output from the same test set.
It can also add latency and fail a share of calls with 429 or 500, so that
retries and error handling get exercised.

Every decision comes from a hash of the seed, the prompt text and, for latency
and failures, how many times this process has already seen that exact prompt.
The same seed over the same prompts therefore gives the same answers, however
the calls interleave.

Known shortcomings, each harmless for the evaluations it exists to simulate:

- Test cases are loaded once and then only those with a larger id than any
  already loaded. A test case edited or deleted after loading keeps its old
  version here, and one whose transaction commits after a case with a larger id
  was loaded is missed; both are fixed by restarting the simulator.
- Every string input value must appear verbatim in the prompt. A template that
  leaves one out or transforms it (`{{ question | upper }}`) makes the test
  case unknown, and the answer is "I do not know."
- A prompt holding several known test cases (few-shot examples drawn from a
  stored test set) is taken for the one covering the most characters, and
  only among equals for the one appearing last; that need not be the question.
- How often a prompt was seen is forgotten once it falls out of the last
  `NUM_RECENT_PROMPTS` distinct prompts; only the sequence of latencies and
  failures for that prompt then starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.settings import Settings
from app.store import db

log = logging.getLogger(__name__)

MODEL_ID = "assay-simulator"

UNKNOWN_PROMPT_REPLY = "I do not know."
NO_EXPECTED_OUTPUT_REPLY = "I have nothing to add."
WRONG_REPLY = "I am not sure, but I would say it is something else entirely."

# Test cases are indexed by a slice of this many characters of one input value.
# Longer slices mean fewer false candidates; every shorter value adds one more
# pass over the prompt.
KEY_LENGTH = 20
# Unrecognised prompts trigger a look for new test cases, at most this often, so
# a client sending junk cannot turn the simulator into a load on the database.
RELOAD_INTERVAL_S = 0.2
LOAD_BATCH_SIZE = 5000
NUM_RECENT_PROMPTS = 100_000
DB_POOL_MAX_SIZE = 2
DB_ACQUIRE_TIMEOUT_S = 10.0
# Simulated latency varies by up to this share either side of the mean.
LATENCY_JITTER = 0.2
# A 429 tells the openai client to wait this long; it reads retry-after-ms
# before Retry-After, and other clients only understand whole seconds.
RETRY_AFTER_MS = 50


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated model behaves; the same config and seed repeat exactly.

    accuracy: the chance that a recognised test case gets its expected output.
    latency_ms: the mean time a call takes, jittered by up to 20% either way.
    error_rate: the chance that a call fails, with 429 or 500 in turn.
    seed: changes every decision; the same seed gives the same answers.
    """

    accuracy: float = 0.8
    latency_ms: float = 0
    error_rate: float = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.accuracy <= 1:
            raise ValueError(f"accuracy must be from 0 to 1, got {self.accuracy!r}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(
                f"error_rate must be from 0 to 1, got {self.error_rate!r}")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(
                f"latency_ms must be a finite number of at least 0, "
                f"got {self.latency_ms!r}")


def create_simulator_app(database_url: str, config: SimulatorConfig) -> Starlette:
    """The simulator as an ASGI app; its lifespan owns the database pool.

    `app.state.simulator` is the `Simulator` behind it, whose counters tell how
    many calls arrived and how many were failed on purpose.
    """
    simulator = Simulator(database_url, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await simulator.start()
        try:
            yield
        finally:
            await simulator.stop()

    app = Starlette(
        routes=[
            Route("/v1/models", _list_models, methods=["GET"]),
            Route("/v1/chat/completions", _create_chat_completion,
                  methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.simulator = simulator
    return app


# --- HTTP ---------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


async def _list_models(request: Request) -> Response:
    return JSONResponse({
        "object": "list",
        "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "assay"},
        ],
    })


async def _create_chat_completion(request: Request) -> Response:
    simulator: Simulator = request.app.state.simulator
    simulator.num_requests += 1

    try:
        body = _parse_json_object(await request.body())
        model = _model_of(body)
        if body.get("stream"):
            raise _BadRequest("streaming is not supported by the Assay simulator",
                              "stream")
        prompt = _prompt_of(body)
    except _BadRequest as bad:
        return _error_response(400, bad.message, "invalid_request_error",
                               param=bad.param)

    outcome = await simulator.respond(prompt)

    if isinstance(outcome, SimulatedFailure):
        return _error_response(outcome.status_code, outcome.message,
                               outcome.error_type, code=outcome.code,
                               headers=outcome.headers)
    return JSONResponse(_chat_completion(model, prompt, outcome))


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    return body


def _model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model", MODEL_ID)
    if not isinstance(model, str) or not model.strip():
        raise _BadRequest("'model' must be a non-empty string", "model")
    return model


def _prompt_of(body: Mapping[str, Any]) -> str:
    """All messages' text, system prompt included, in order."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array of messages",
                          "messages")

    texts: list[str] = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(f"messages[{number}] must be an object with a role",
                              f"messages[{number}]")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            # The newer form: a list of parts, of which only text matters here.
            texts.extend(part["text"] for part in content if isinstance(part, dict)
                         and isinstance(part.get("text"), str))
        elif content is not None:
            raise _BadRequest(f"messages[{number}].content must be a string or "
                              "an array of parts", f"messages[{number}].content")
    return "\n".join(texts)


def _chat_completion(model: str, prompt: str, content: str) -> dict[str, Any]:
    num_prompt_tokens = _count_tokens(prompt)
    num_completion_tokens = _count_tokens(content)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": num_prompt_tokens,
            "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens,
        },
    }


def _count_tokens(text: str) -> int:
    # Words stand in for tokens; a real tokenizer would tie the simulator to one
    # model family for numbers nobody reads closely.
    return max(1, len(text.split()))


def _error_response(status_code: int, message: str, error_type: str, *,
                    param: str | None = None, code: str | None = None,
                    headers: Mapping[str, str] | None = None) -> Response:
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status_code,
                        headers=dict(headers or {}))


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and methods answer in OpenAI's shape too, so the client
    # reports them as API errors rather than as undecodable bodies.
    assert isinstance(exc, HTTPException)
    return _error_response(exc.status_code, exc.detail, "invalid_request_error",
                           headers=exc.headers)


# --- Answering ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimulatedFailure:
    """A call the simulator fails on purpose, as an OpenAI-style error."""

    status_code: int
    error_type: str
    message: str
    code: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


_RATE_LIMITED = SimulatedFailure(
    429, "rate_limit_error", "simulated rate limit; please retry",
    code="rate_limit_exceeded",
    headers={"Retry-After": "1", "retry-after-ms": str(RETRY_AFTER_MS)},
)
_SERVER_ERROR = SimulatedFailure(
    500, "server_error", "simulated server error; please retry")


@dataclasses.dataclass(slots=True)
class _RecentPrompt:
    case: KnownCase | None
    # The size of the index when `case` was decided: an unrecognised prompt is
    # only worth matching again once the index has grown.
    num_cases_known: int
    num_seen: int = 0


class Simulator:
    """The simulated model: known test cases, recent prompts and counters.

    num_requests counts chat completion calls, num_failures those failed on
    purpose, and num_loads the queries for test cases, start-up included.
    """

    def __init__(self, database_url: str, config: SimulatorConfig) -> None:
        self.config = config
        self.index = CaseIndex()
        self.num_requests = 0
        self.num_failures = 0
        self.num_loads = 0
        self._database_url = database_url
        self._pool: asyncpg.Pool | None = None
        self._recent: collections.OrderedDict[bytes, _RecentPrompt] = (
            collections.OrderedDict())
        self._load_lock = asyncio.Lock()
        self._next_load_at = 0.0
        self._seed = str(config.seed).encode()

    async def start(self) -> None:
        """Connect to the database and load every test case it holds."""
        settings = Settings(database_url=self._database_url)
        self._pool = await db.create_pool(settings, max_size=DB_POOL_MAX_SIZE)
        try:
            await db.check_schema(self._pool)
            started_at = time.monotonic()
            num_loaded = await self._load_new_cases()
        except BaseException:
            await self._pool.close()
            raise
        self._next_load_at = time.monotonic() + RELOAD_INTERVAL_S
        log.info("simulator loaded %d test cases from %s in %.2f s", num_loaded,
                 settings.safe_database_url, time.monotonic() - started_at)

    async def stop(self) -> None:
        """Close the database pool; the index stays as it is."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def respond(self, prompt: str) -> str | SimulatedFailure:
        """The reply to one prompt, or the failure the call should end with."""
        digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
        recent = self._recall(digest, prompt)
        # Taken before any await, so that concurrent calls with the same prompt
        # each get their own number.
        num_seen = recent.num_seen
        recent.num_seen += 1

        if self.config.latency_ms > 0:
            jitter = LATENCY_JITTER * (2 * self._chance(b"latency", digest, num_seen)
                                       - 1)
            await asyncio.sleep(self.config.latency_ms * (1 + jitter) / 1000)

        if self._chance(b"error", digest, num_seen) < self.config.error_rate:
            self.num_failures += 1
            # Alternating per prompt: a client retrying one call meets both.
            return _RATE_LIMITED if num_seen % 2 == 0 else _SERVER_ERROR

        case = await self._recognise(prompt, recent)
        return self._answer(case, digest)

    def _recall(self, digest: bytes, prompt: str) -> _RecentPrompt:
        recent = self._recent.get(digest)
        if recent is not None:
            self._recent.move_to_end(digest)
            return recent

        recent = _RecentPrompt(self.index.match(prompt), self.index.num_cases)
        self._recent[digest] = recent
        if len(self._recent) > NUM_RECENT_PROMPTS:
            self._recent.popitem(last=False)
        return recent

    async def _recognise(self, prompt: str,
                         recent: _RecentPrompt) -> KnownCase | None:
        if recent.case is not None:
            return recent.case

        if recent.num_cases_known == self.index.num_cases:
            await self._load_new_cases_if_due()
        if recent.num_cases_known != self.index.num_cases:
            recent.case = self.index.match(prompt)
            recent.num_cases_known = self.index.num_cases
        return recent.case

    def _answer(self, case: KnownCase | None, digest: bytes) -> str:
        if case is None:
            return UNKNOWN_PROMPT_REPLY
        if case.expected_output is None:
            return NO_EXPECTED_OUTPUT_REPLY
        if self._chance(b"correct", digest) < self.config.accuracy:
            return case.expected_output
        return self._wrong_answer(case, case.expected_output, digest)

    def _wrong_answer(self, case: KnownCase, expected: str, digest: bytes) -> str:
        number = _FINAL_NUMBER.search(expected)
        if number is not None:
            return _change_final_number(expected, number,
                                        self._chance(b"wrong-size", digest),
                                        self._chance(b"wrong-way", digest))

        # Another test case's answer, but never one that still contains the
        # expected text: a CONTAINS scorer would pass it.
        outputs = self.index.outputs_of(case.test_set_id)
        needle = expected.strip().casefold()
        start = int(self._chance(b"wrong-pick", digest) * len(outputs))
        for step in range(min(len(outputs), 32)):
            other = outputs[(start + step) % len(outputs)]
            if needle not in other.casefold():
                return other
        return WRONG_REPLY

    def _chance(self, purpose: bytes, digest: bytes, num_seen: int = 0) -> float:
        """A number in [0, 1) fixed by the seed, the prompt and the purpose."""
        material = b"%s|%s|%d|%s" % (self._seed, purpose, num_seen, digest)
        value = hashlib.blake2b(material, digest_size=8).digest()
        return int.from_bytes(value, "big") / 2**64

    async def _load_new_cases_if_due(self) -> None:
        if time.monotonic() < self._next_load_at:
            return
        async with self._load_lock:
            # Whoever held the lock may just have loaded; the caller then sees
            # the index grown without a query of its own.
            if time.monotonic() < self._next_load_at:
                return
            try:
                num_loaded = await self._load_new_cases()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as error:
                log.warning("simulator could not look for new test cases, so "
                            "unrecognised prompts get %r: %s", UNKNOWN_PROMPT_REPLY,
                            error)
                return
            finally:
                self._next_load_at = time.monotonic() + RELOAD_INTERVAL_S
        if num_loaded:
            log.info("simulator loaded %d new test cases, now knows %d",
                     num_loaded, self.index.num_cases)

    async def _load_new_cases(self) -> int:
        """Add the test cases with a larger id than any known; how many there were."""
        assert self._pool is not None, "the simulator has not been started"
        self.num_loads += 1
        num_loaded = 0
        async with self._pool.acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
            while True:
                rows = await conn.fetch(
                    "SELECT id, test_set_id, input, expected_output"
                    " FROM test_cases WHERE id > $1 ORDER BY id LIMIT $2",
                    self.index.max_case_id, LOAD_BATCH_SIZE)
                for row in rows:
                    self.index.add(KnownCase.from_row(
                        row["id"], row["test_set_id"], row["input"],
                        row["expected_output"]))
                num_loaded += len(rows)
                if len(rows) < LOAD_BATCH_SIZE:
                    return num_loaded


# --- Wrong numbers ------------------------------------------------------------

# The last number of a text, allowing a closing full stop or percent sign:
# "#### 72", "-3.5", "1,234", "The answer is 42."
_FINAL_NUMBER = re.compile(
    r"(?<![\d.,])(?P<sign>[-+]?)(?P<whole>\d{1,3}(?:,\d{3})+|\d+)"
    r"(?:\.(?P<fraction>\d+))?(?P<tail>%?\.?\s*)$"
)


def _change_final_number(text: str, number: re.Match[str], size: float,
                         way: float) -> str:
    """`text` with its final number moved by 5-50%, same sign and format."""
    fraction = number["fraction"] or ""
    units = int(number["whole"].replace(",", "") + fraction)
    if number["sign"] == "-":
        units = -units

    # Whole units of the last decimal place keep the arithmetic exact.
    delta = max(1 + int(3 * size), abs(units) * (50 + int(450 * size)) // 1000)
    down = way < 0.5
    wrong = units - delta if down else units + delta
    if (wrong >= 0) != (units >= 0):
        wrong = units + delta if down else units - delta

    digits = str(abs(wrong)).rjust(len(fraction) + 1, "0")
    split = len(digits) - len(fraction)
    whole = digits[:split]
    if "," in number["whole"]:
        whole = f"{int(whole):,}"
    elif number["whole"].startswith("0"):
        whole = whole.zfill(len(number["whole"]))
    decimals = f".{digits[split:]}" if fraction else ""
    sign = "-" if wrong < 0 else "+" if number["sign"] == "+" else ""
    return f"{text[:number.start()]}{sign}{whole}{decimals}{number['tail']}"


# --- Recognising test cases ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class KnownCase:
    """A test case as the simulator knows it: what must appear in its prompts.

    required_texts all appear in a prompt rendered from this test case: its
    string input values, or when it has none, its scalar values as printed.
    optional_texts are its other values as printed; those that appear make a
    match more certain.
    """

    id: int
    test_set_id: int
    expected_output: str | None
    required_texts: tuple[str, ...]
    optional_texts: tuple[str, ...]
    num_required_chars: int

    @classmethod
    def from_row(cls, case_id: int, test_set_id: int,
                 case_input: Mapping[str, Any],
                 expected_output: str | None) -> KnownCase:
        strings, printed_scalars, printed_others = [], [], []
        for value in case_input.values():
            if isinstance(value, str):
                strings.append(value.strip())
            elif isinstance(value, (list, dict)):
                printed_others.append(str(value))
                printed_others.extend(_nested_strings(value))
            else:
                printed_scalars.append(str(value))

        required = _distinct_longest_first(strings or printed_scalars)
        optional = _distinct_longest_first(
            text for text in [*printed_scalars, *printed_others]
            if text not in required)
        return cls(case_id, test_set_id, expected_output, required, optional,
                   sum(map(len, required)))


def _nested_strings(value: Any) -> Iterator[str]:
    # Strings inside lists and dicts usually reach a prompt through a loop in
    # the template, one by one, rather than as the printed container.
    if isinstance(value, str):
        yield value.strip()
    elif isinstance(value, list):
        for item in value:
            yield from _nested_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _nested_strings(item)


def _distinct_longest_first(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({text for text in texts if text},
                        key=lambda text: (-len(text), text)))


class CaseIndex:
    """Known test cases, found from a prompt in time that hardly grows with them.

    Each test case is filed under one slice of `KEY_LENGTH` characters of one
    required text (or the whole text, if shorter), chosen to share its bucket
    with as few other test cases as possible. Matching looks up every substring
    of the prompt of each length in use, then keeps the candidates whose
    required texts all appear, preferring the one covering the most characters.
    """

    def __init__(self) -> None:
        self._buckets_by_length: dict[int, dict[str, list[KnownCase]]] = {}
        self._outputs_by_test_set: dict[int, dict[str, None]] = {}
        self._output_lists: dict[int, list[str]] = {}
        self.max_case_id = 0
        self.num_cases = 0

    def add(self, case: KnownCase) -> None:
        self.max_case_id = max(self.max_case_id, case.id)
        if case.expected_output is not None:
            outputs = self._outputs_by_test_set.setdefault(case.test_set_id, {})
            if case.expected_output not in outputs:
                outputs[case.expected_output] = None
                self._output_lists.setdefault(case.test_set_id, []).append(
                    case.expected_output)
        if not case.required_texts:
            # An empty input puts nothing into a prompt to recognise it by.
            return

        key = self._key_for(case)
        buckets = self._buckets_by_length.setdefault(len(key), {})
        buckets.setdefault(key, []).append(case)
        self.num_cases += 1

    def outputs_of(self, test_set_id: int) -> Sequence[str]:
        """The distinct expected outputs of a test set, in loading order."""
        return self._output_lists.get(test_set_id, ())

    def match(self, prompt: str) -> KnownCase | None:
        """The known test case this prompt was most likely rendered from."""
        # This loop is the cost of a match. Plain slicing and dict lookups beat
        # every map/filter variation tried, and keyed by id, a case found at
        # several places is checked only once.
        candidates: dict[int, KnownCase] = {}
        for length, buckets in self._buckets_by_length.items():
            find = buckets.get
            for start in range(len(prompt) - length + 1):
                bucket = find(prompt[start:start + length])
                if bucket is not None:
                    for case in bucket:
                        candidates[case.id] = case

        best: KnownCase | None = None
        best_rank = (-1, -1, -1)
        for case in candidates.values():
            required = case.required_texts
            # Most candidates are chance hits that fail on their first text;
            # testing it alone spares them the generator.
            if required[0] not in prompt or not all(
                    text in prompt for text in required[1:]):
                continue
            num_chars = case.num_required_chars + sum(
                len(text) for text in case.optional_texts if text in prompt)
            # Among equals, the one whose longest text comes last (the question
            # rather than a worked example before it), then the newest: the
            # same questions imported twice are most likely being evaluated
            # in the newer test set.
            rank = (num_chars, prompt.rfind(required[0]), case.id)
            if rank > best_rank:
                best, best_rank = case, rank
        return best

    def _key_for(self, case: KnownCase) -> str:
        best_key = ""
        best_rank: tuple[bool, int, int] | None = None
        for text in case.required_texts:
            length = min(len(text), KEY_LENGTH)
            buckets = self._buckets_by_length.get(length, {})
            for start in (0, (len(text) - length) // 2, len(text) - length):
                key = text[start:start + length]
                # Full-length keys first (fewer passes over each prompt), then
                # the emptiest bucket, then the longest text.
                rank = (length < KEY_LENGTH, len(buckets.get(key, ())), -len(text))
                if best_rank is None or rank < best_rank:
                    best_key, best_rank = key, rank
        return best_key


# --- Command line -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `assay simulator` options to a (sub)command's parser."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8001,
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--accuracy", type=_fraction, default=0.8,
                        help="chance, 0 to 1, that a recognised test case gets "
                             "its expected output (default: %(default)s)")
    parser.add_argument("--latency-ms", type=_latency_ms, default=0.0,
                        help="mean simulated latency of a call in milliseconds "
                             "(default: %(default)s)")
    parser.add_argument("--error-rate", type=_fraction, default=0.0,
                        help="chance, 0 to 1, that a call fails with 429 or 500 "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=_whole_number, default=0,
                        help="seed for every decision; the same seed over the "
                             "same prompts gives the same answers "
                             "(default: %(default)s)")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the simulator until stopped; the process exit code."""
    config = SimulatorConfig(accuracy=args.accuracy, latency_ms=args.latency_ms,
                             error_rate=args.error_rate, seed=args.seed)
    app = create_simulator_app(settings.database_url, config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, lifespan="on", ws="none",
        access_log=False, log_config=None))
    host = f"[{args.host}]" if ":" in args.host else args.host

    log.info("simulator starting at http://%s:%d/v1 as model %r with accuracy %s,"
             " latency %s ms, error rate %s, seed %d, database %s", host, args.port,
             MODEL_ID, config.accuracy, config.latency_ms, config.error_rate,
             config.seed, settings.safe_database_url)
    try:
        await server.serve()
    except SystemExit as exit:
        # uvicorn exits when start-up fails (port taken, database unreachable)
        # after logging why; the CLI wants an exit code, not a dead loop.
        return exit.code if isinstance(exit.code, int) and exit.code else 1
    return 0 if server.started else 1


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {raw!r}")
    return value


def _latency_ms(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"must be a number of milliseconds, at least 0, got {raw!r}")
    return value


def _port(raw: str) -> int:
    value = _whole_number(raw)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, got {raw!r}")
    return value


def _whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number, got {raw!r}") from None
