"""The model client against an endpoint that misbehaves in every way we know.

Each fault ends as an answer (when a retry got through) or as a ModelError of
one kind; nothing else escapes the client, and nothing that is not an answer
comes back as one.
"""

from __future__ import annotations

import time

import pytest

from app.llm.client import CallOptions, ModelClient, ModelError
from tests.fake_model import (
    Answer,
    Hang,
    NoChoices,
    NotJson,
    Reset,
    Status,
    TooManyRequests,
    fake_model,
)

OPTIONS = CallOptions(model="fake-model")
TIMEOUT_S = 0.5


async def ask(fake, prompt: str, *, max_retries: int = 1):
    client = ModelClient(fake.base_url, None, timeout_s=TIMEOUT_S,
                         max_retries=max_retries)
    try:
        return await client.complete(prompt, OPTIONS)
    finally:
        await client.close()


FAILURES = [
    # Not retried here: the run's throttle holds every call off together.
    pytest.param([TooManyRequests()], "rate_limited", False, id="429"),
    pytest.param([Status(500)] * 2, "upstream_error", False, id="500"),
    pytest.param([Status(502)] * 2, "upstream_error", False, id="502"),
    pytest.param([Status(503)] * 2, "upstream_error", False, id="503"),
    pytest.param([Reset()] * 2, "connection_error", False, id="connection-reset"),
    pytest.param([Hang()] * 2, "timeout", False, id="never-answers"),
    pytest.param([NotJson()], "invalid_response", False, id="body-not-json"),
    pytest.param([NoChoices()], "invalid_response", False, id="empty-choices"),
    pytest.param([Answer(content=None)], "invalid_response", False, id="no-content"),
    pytest.param([Answer(content=None, refusal="I can't help with that.")],
                 "refused", False, id="refusal"),
    pytest.param([Answer(content="", finish_reason="content_filter")],
                 "content_filtered", False, id="content-filter"),
    pytest.param([Status(400)], "bad_request", False, id="400"),
    pytest.param([Status(401)], "unauthorized", True, id="401"),
    pytest.param([Status(403)], "unauthorized", True, id="403"),
    pytest.param([Status(404)], "model_not_found", True, id="404"),
]


@pytest.mark.parametrize("script, kind, fatal", FAILURES)
async def test_each_fault_is_a_model_error_of_its_own_kind(script, kind, fatal):
    async with fake_model([("q", script)]) as fake:
        with pytest.raises(ModelError) as raised:
            await ask(fake, "q", max_retries=len(script) - 1)

    assert raised.value.kind == kind
    assert raised.value.fatal is fatal
    assert str(raised.value).startswith(f"{kind}: ")
    # Retries are spent only on faults worth retrying.
    assert len(fake.calls) == len(script)


async def test_a_refusal_keeps_what_the_model_said():
    refusal = Answer(content=None, refusal="No, sorry.")
    async with fake_model([("q", [refusal])]) as fake:
        with pytest.raises(ModelError) as raised:
            await ask(fake, "q")

    assert raised.value.output == "No, sorry."


@pytest.mark.parametrize("fault", [
    Status(500), Status(502), Status(503), Reset(), Hang(),
], ids=["500", "502", "503", "reset", "hang"])
async def test_a_retry_that_gets_through_returns_the_answer(fault):
    async with fake_model([("q", [fault, Answer("42")])]) as fake:
        answer = await ask(fake, "q", max_retries=1)

    assert answer.output == "42"
    assert len(fake.calls) == 2


async def test_a_429_comes_back_at_once_with_its_retry_after():
    async with fake_model([("s", [TooManyRequests("2")]),
                           ("none", [TooManyRequests(None)])]) as fake:
        errors = {}
        for prompt in ("s", "none"):
            with pytest.raises(ModelError) as raised:
                await ask(fake, prompt, max_retries=3)
            errors[prompt] = raised.value

    assert len(fake.calls) == 2  # no retries despite max_retries=3
    assert errors["s"].kind == "rate_limited"
    assert errors["s"].retry_after_s == 2.0
    assert errors["none"].retry_after_s is None


async def test_backoff_without_retry_after_is_jittered_and_bounded():
    async with fake_model() as fake:
        fake.default = Status(503)
        started = time.monotonic()
        with pytest.raises(ModelError):
            await ask(fake, "q", max_retries=2)
        elapsed = time.monotonic() - started

    gaps = [b.at - a.at for a, b in zip(fake.calls, fake.calls[1:])]
    assert len(fake.calls) == 3
    # 0.5 s then 1 s, each less up to a quarter at random.
    assert 0.37 <= gaps[0] <= 0.6 and 0.74 <= gaps[1] <= 1.1
    assert elapsed < 3


async def test_a_call_that_never_answers_ends_within_its_deadline():
    async with fake_model() as fake:
        fake.default = Hang()
        started = time.monotonic()
        with pytest.raises(ModelError) as raised:
            await ask(fake, "q", max_retries=1)
        elapsed = time.monotonic() - started

    assert raised.value.kind == "timeout"
    # Two attempts of TIMEOUT_S and one backoff of at most 0.5 s.
    assert elapsed < 2 * TIMEOUT_S + 0.5 + 0.5


@pytest.mark.parametrize("content, stored", [
    ("4\x002", "4\ufffd2"),
    ("half \ud800 a pair", "half \ufffd a pair"),
    ("emoji 🦜 and עברית", "emoji 🦜 and עברית"),
], ids=["nul", "lone-surrogate", "unicode"])
async def test_answers_are_kept_with_only_unstorable_characters_replaced(
        content, stored):
    async with fake_model([("q", [Answer(content)])]) as fake:
        answer = await ask(fake, "q")

    assert answer.output == stored
