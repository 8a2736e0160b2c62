"""An OpenAI-compatible model that misbehaves on cue, over real HTTP.

It is a bare HTTP/1.1 server on asyncio streams rather than an ASGI app, so
it can do what no well-behaved framework would: reset the connection, never
answer, or send a body that is not JSON. A test scripts what each prompt gets
on each call (`fake.script("q7", TooManyRequests(), Answer("42"))`); a prompt
with no script, or whose script is used up, gets `fake.default`.

The prompt is the text of the last user message, so a test picks its faults
by the inputs of its test cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable


@dataclasses.dataclass(frozen=True)
class Answer:
    """A well-formed completion."""

    content: str | None = "42"
    finish_reason: str = "stop"
    refusal: str | None = None


@dataclasses.dataclass(frozen=True)
class NoChoices:
    """A 200 whose `choices` list is empty."""


@dataclasses.dataclass(frozen=True)
class Status:
    """An error status with an OpenAI-style JSON error body."""

    code: int
    retry_after: str | None = None


def TooManyRequests(retry_after: str | None = None) -> Status:  # noqa: N802
    return Status(429, retry_after)


@dataclasses.dataclass(frozen=True)
class NotJson:
    """A 200 whose body is an HTML error page."""


@dataclasses.dataclass(frozen=True)
class Reset:
    """The connection is reset (TCP RST) once the request has been read."""


@dataclasses.dataclass(frozen=True)
class Hang:
    """The request is read and never answered."""


Behaviour = Answer | NoChoices | Status | NotJson | Reset | Hang


@dataclasses.dataclass(frozen=True)
class Call:
    prompt: str
    at: float  # time.monotonic()
    behaviour: Behaviour


class FakeModel:
    def __init__(self) -> None:
        self.default: Behaviour = Answer()
        self.calls: list[Call] = []
        self.base_url = ""
        # While above zero, every call (whatever its prompt) gets this 429.
        self.rate_limit_calls = 0
        self.rate_limit_retry_after: str | None = None
        # Hung calls whose client gave up on them and closed the connection.
        self.abandoned = 0
        # How long every call takes to be answered.
        self.latency_s = 0.0
        self._scripts: dict[str, deque[Behaviour]] = defaultdict(deque)
        self._closing = asyncio.Event()

    def script(self, prompt: str, *behaviours: Behaviour) -> None:
        """What the next calls with exactly this prompt get, in order."""
        self._scripts[prompt].extend(behaviours)

    def rate_limit(self, calls: int, retry_after: str | None = None) -> None:
        """Answer the next `calls` calls, whatever they ask, with a 429."""
        self.rate_limit_calls = calls
        self.rate_limit_retry_after = retry_after

    def calls_for(self, prompt: str) -> list[Call]:
        return [c for c in self.calls if c.prompt == prompt]

    async def serve_connection(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                keep_open = await self._answer(request, reader, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _answer(self, body: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        request = json.loads(body or b"{}")
        prompt = _last_user_message(request)
        queued = self._scripts.get(prompt)
        if self.rate_limit_calls > 0:
            self.rate_limit_calls -= 1
            behaviour: Behaviour = TooManyRequests(self.rate_limit_retry_after)
        else:
            behaviour = queued.popleft() if queued else self.default
        self.calls.append(Call(prompt, time.monotonic(), behaviour))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

        match behaviour:
            case Answer():
                await _respond(writer, 200, _completion(request, behaviour))
            case NoChoices():
                await _respond(writer, 200, _completion(request, None))
            case Status(code=code, retry_after=retry_after):
                headers = {"retry-after": retry_after} if retry_after else {}
                error = {"error": {"message": f"fake model says {code}",
                                   "type": "fake_error", "code": str(code)}}
                await _respond(writer, code, json.dumps(error).encode(), headers)
            case NotJson():
                await _respond(writer, 200, b"<html><body>Bad gateway</body></html>",
                               content_type="text/html")
            case Reset():
                sock = writer.get_extra_info("socket")
                # Linger 0: close sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
                writer.transport.abort()
                return False
            case Hang():
                closing = asyncio.ensure_future(self._closing.wait())
                client_left = asyncio.ensure_future(reader.read())
                await asyncio.wait({closing, client_left},
                                   return_when=asyncio.FIRST_COMPLETED)
                if client_left.done():
                    self.abandoned += 1
                closing.cancel()
                client_left.cancel()
                return False
        return True


@contextlib.asynccontextmanager
async def fake_model(behaviours: Iterable[tuple[str, list[Behaviour]]] = (),
                     ) -> AsyncIterator[FakeModel]:
    """Serve a FakeModel on a free loopback port; `fake.base_url` ends in /v1."""
    fake = FakeModel()
    for prompt, script in behaviours:
        fake.script(prompt, *script)
    connections: set[asyncio.Task] = set()

    async def on_connection(reader, writer):
        task = asyncio.current_task()
        connections.add(task)
        try:
            await fake.serve_connection(reader, writer)
        finally:
            connections.discard(task)

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        fake._closing.set()
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The body of the next request on this connection; None once it closes."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return await reader.readexactly(length)


def _last_user_message(request: dict) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def _completion(request: dict, answer: Answer | None) -> bytes:
    choices = [] if answer is None else [{
        "index": 0,
        "message": {"role": "assistant", "content": answer.content,
                    "refusal": answer.refusal},
        "finish_reason": answer.finish_reason,
    }]
    return json.dumps({
        "id": "fake-1", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", "fake"), "choices": choices,
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }).encode()


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes,
                   headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> None:
    lines = [f"HTTP/1.1 {status} Fake", f"content-type: {content_type}",
             f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
