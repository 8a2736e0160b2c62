"""Calling an OpenAI-compatible chat-completions endpoint.

This is the one boundary where the openai client's exceptions are turned into
Assay's own: a `ModelError` whose `kind` says what went wrong for the result,
and `fatal` marks failures that no other case would survive either (rejected
credentials, an unknown model), so the run stops instead of burning through
every case. An answer that is not a usable completion (a body that is not
JSON, no choices, a refusal, a content filter) is an error too, never an
empty answer that would be scored as a wrong one.

The openai client retries what is worth retrying (5xx, resets, timeouts)
with jittered backoff; `max_retries` bounds it. A 429 is not retried here:
it comes back at once as `rate_limited`, with the Retry-After it carried, so
that the run holds all its calls off together (app/jobs/throttle.py) rather
than each caller sleeping on its own while the others keep knocking.

Each attempt is bounded by `timeout_s` between bytes, and the whole call by
a deadline, so a server that trickles an answer cannot hold a case forever
either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import math
import re
import time

import openai
from openai.types.chat import ChatCompletion

from app.settings import Settings

log = logging.getLogger(__name__)

# The simulator and most local servers take any key; the openai client refuses
# to start without one.
_PLACEHOLDER_API_KEY = "not-needed"

# The openai client's longest wait between two attempts, in seconds (a
# Retry-After on a 5xx can ask for up to two minutes; its own backoff stops
# at 8 s).
_MAX_BACKOFF_S = 120.0
# Characters PostgreSQL text cannot hold: NUL, and halves of surrogate pairs
# that a JSON body can smuggle in as escapes.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class ModelAnswer:
    output: str
    latency_ms: int
    prompt_tokens: int | None
    completion_tokens: int | None


class ModelError(Exception):
    """A model call failed after the client's own retries."""

    def __init__(self, kind: str, message: str, *, fatal: bool = False,
                 latency_ms: int | None = None, retry_after_s: float | None = None,
                 output: str | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.fatal = fatal
        self.latency_ms = latency_ms
        # What the endpoint asked for on a 429, if it said.
        self.retry_after_s = retry_after_s
        # Text the model did send with a failed answer (a refusal, say).
        self.output = output


@dataclasses.dataclass(frozen=True)
class CallOptions:
    model: str
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class _NoRateLimitRetries(openai.AsyncOpenAI):
    # _should_retry is the openai client's own hook (not a public one);
    # tests/llm/test_model_faults.py fails if an upgrade stops calling it.
    def _should_retry(self, response) -> bool:
        if response.status_code == 429:
            return False
        return super()._should_retry(response)


class ModelClient:
    """One openai client per process, shared by every evaluation it runs."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float,
                 max_retries: int) -> None:
        self.base_url = base_url
        self._client = _NoRateLimitRetries(
            base_url=base_url, api_key=api_key or _PLACEHOLDER_API_KEY,
            timeout=timeout_s, max_retries=max_retries,
        )
        self._deadline_s = (timeout_s * (max_retries + 1)
                            + _MAX_BACKOFF_S * max_retries)

    @property
    def deadline_s(self) -> float:
        """The longest one call can take, retries and backoff included."""
        return self._deadline_s

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str) -> ModelClient:
        return cls(base_url, settings.openai_api_key,
                   timeout_s=settings.model_timeout_s,
                   max_retries=settings.model_max_retries)

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, prompt: str, options: CallOptions) -> ModelAnswer:
        messages = []
        if options.system_prompt:
            messages.append({"role": "system", "content": options.system_prompt})
        messages.append({"role": "user", "content": prompt})
        extra = {}
        if options.temperature is not None:
            extra["temperature"] = options.temperature
        if options.max_tokens is not None:
            extra["max_tokens"] = options.max_tokens

        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline_s):
                completion = await self._client.chat.completions.create(
                    model=options.model, messages=messages, **extra)
        except TimeoutError:
            raise ModelError("timeout", f"no answer within {self._deadline_s:g}s"
                             " over all attempts",
                             latency_ms=_elapsed_ms(started)) from None
        except openai.OpenAIError as exc:
            raise _model_error(exc, _elapsed_ms(started)) from exc
        except ValueError as exc:
            # A JSON body that does not parse, or does not fit the schema.
            raise ModelError("invalid_response", "the answer was not a chat"
                             f" completion ({type(exc).__name__})",
                             latency_ms=_elapsed_ms(started)) from exc
        return _answer(completion, _elapsed_ms(started))


def _answer(completion: object, latency_ms: int) -> ModelAnswer:
    """The text of a completion, or the ModelError saying why there is none."""
    if not isinstance(completion, ChatCompletion):
        # The client hands back the raw text of a body that is not JSON.
        raise ModelError("invalid_response", "the answer was not JSON",
                         latency_ms=latency_ms)
    if not completion.choices:
        raise ModelError("invalid_response", "the answer had no choices",
                         latency_ms=latency_ms)
    choice = completion.choices[0]
    message = choice.message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise ModelError("refused", "the model refused to answer",
                         latency_ms=latency_ms, output=storable(refusal))
    if choice.finish_reason == "content_filter":
        raise ModelError("content_filtered",
                         "the endpoint's content filter withheld the answer",
                         latency_ms=latency_ms,
                         output=storable(message.content) if message.content
                         else None)
    if not isinstance(message.content, str):
        raise ModelError("invalid_response", "the answer had no text content",
                         latency_ms=latency_ms)
    usage = completion.usage
    return ModelAnswer(
        output=storable(message.content), latency_ms=latency_ms,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


def storable(text: str) -> str:
    """`text` with what PostgreSQL cannot store replaced by U+FFFD; the rest
    of the answer is kept as it was."""
    return _UNSTORABLE.sub("\ufffd", text)


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _model_error(exc: openai.OpenAIError, latency_ms: int) -> ModelError:
    if isinstance(exc, openai.APITimeoutError):
        return ModelError("timeout", "the model did not answer in time",
                          latency_ms=latency_ms)
    if isinstance(exc, openai.APIConnectionError):
        return ModelError("connection_error", "could not reach the model endpoint",
                          latency_ms=latency_ms)
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ModelError("unauthorized",
                          f"the model endpoint rejected the credentials"
                          f" (HTTP {exc.status_code})", fatal=True,
                          latency_ms=latency_ms)
    if isinstance(exc, openai.NotFoundError):
        return ModelError("model_not_found",
                          "the model endpoint does not know this model (HTTP 404)",
                          fatal=True, latency_ms=latency_ms)
    if isinstance(exc, openai.RateLimitError):
        return ModelError("rate_limited",
                          "the model endpoint is rate limiting (HTTP 429)",
                          latency_ms=latency_ms,
                          retry_after_s=_retry_after_s(exc.response))
    if isinstance(exc, openai.APIStatusError):
        kind = "upstream_error" if exc.status_code >= 500 else "bad_request"
        return ModelError(kind, f"the model endpoint answered HTTP {exc.status_code}",
                          latency_ms=latency_ms)
    return ModelError("invalid_response", type(exc).__name__, latency_ms=latency_ms)


def _retry_after_s(response) -> float | None:
    """Seconds asked for by a retry-after-ms or Retry-After header (a number
    of seconds or an HTTP date), if either is usable."""
    headers = response.headers
    candidates = []
    if (value := headers.get("retry-after-ms")) is not None:
        candidates.append(lambda: float(value) / 1000)
    if (value := headers.get("retry-after")) is not None:
        candidates.append(lambda: float(value))
        candidates.append(
            lambda: email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    for seconds_of in candidates:
        try:
            seconds = seconds_of()
        except (ValueError, TypeError, OverflowError):
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None
