"""Calling an OpenAI-compatible chat-completions endpoint.

This is the one boundary where the openai client's exceptions are turned into
Assay's own: a `ModelError` whose `kind` says what went wrong for the result,
and `fatal` marks failures that no other case would survive either (rejected
credentials, an unknown model), so the run stops instead of burning through
every case.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import openai

from app.settings import Settings

log = logging.getLogger(__name__)

# The simulator and most local servers take any key; the openai client refuses
# to start without one.
_PLACEHOLDER_API_KEY = "not-needed"


@dataclasses.dataclass(frozen=True)
class ModelAnswer:
    output: str
    latency_ms: int
    prompt_tokens: int | None
    completion_tokens: int | None


class ModelError(Exception):
    """A model call failed after the client's own retries."""

    def __init__(self, kind: str, message: str, *, fatal: bool = False,
                 latency_ms: int | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.fatal = fatal
        self.latency_ms = latency_ms


@dataclasses.dataclass(frozen=True)
class CallOptions:
    model: str
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class ModelClient:
    """One openai client per process, shared by every evaluation it runs."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float,
                 max_retries: int) -> None:
        self.base_url = base_url
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or _PLACEHOLDER_API_KEY,
            timeout=timeout_s, max_retries=max_retries,
        )

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
            completion = await self._client.chat.completions.create(
                model=options.model, messages=messages, **extra)
        except openai.OpenAIError as exc:
            raise _model_error(exc, _elapsed_ms(started)) from exc
        latency_ms = _elapsed_ms(started)

        if not completion.choices:
            raise ModelError("invalid_response", "the answer had no choices",
                             latency_ms=latency_ms)
        output = completion.choices[0].message.content
        if output is None:
            raise ModelError("invalid_response", "the answer had no text content",
                             latency_ms=latency_ms)
        usage = completion.usage
        return ModelAnswer(
            output=output, latency_ms=latency_ms,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )


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
        return ModelError("rate_limited", "still rate limited after retries (HTTP 429)",
                          latency_ms=latency_ms)
    if isinstance(exc, openai.APIStatusError):
        kind = "upstream_error" if exc.status_code >= 500 else "bad_request"
        return ModelError(kind, f"the model endpoint answered HTTP {exc.status_code}",
                          latency_ms=latency_ms)
    return ModelError("invalid_response", type(exc).__name__, latency_ms=latency_ms)
