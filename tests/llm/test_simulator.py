"""The simulator, served by uvicorn on loopback and called with the openai client.

Every test inserts test sets of its own (names and texts made unique with a
uuid) and starts simulators afterwards, so each one loads them at start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
import jinja2
import openai
import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette

from app.llm.simulator import (
    NO_EXPECTED_OUTPUT_REPLY,
    UNKNOWN_PROMPT_REPLY,
    CaseIndex,
    KnownCase,
    SimulatorConfig,
    add_arguments,
    create_simulator_app,
)

TEMPLATE = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
    "Solve the problem and end with the answer.\n\n"
    "Problem: {{ question }}\nAnswer:"
)
SYSTEM_PROMPT = "You are a careful assistant."


@dataclasses.dataclass
class RunningSimulator:
    app: Starlette
    base_url: str

    @property
    def num_requests(self) -> int:
        return self.app.state.simulator.num_requests

    def client(self, *, max_retries: int = 0) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="test",
                                  max_retries=max_retries, timeout=10)

    async def ask(self, prompt: str, *, system: str | None = SYSTEM_PROMPT) -> str:
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        async with self.client() as client:
            completion = await client.chat.completions.create(
                model="any-model", messages=messages, temperature=0)
        return completion.choices[0].message.content


StartSimulator = Callable[..., Awaitable[RunningSimulator]]


@contextlib.asynccontextmanager
async def _serving(app: Starlette) -> AsyncIterator[RunningSimulator]:
    # Port 0 lets the kernel pick a free port; the bound socket tells which.
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", ws="none",
        access_log=False, log_config=None))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the simulator stopped during start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield RunningSimulator(app, f"http://127.0.0.1:{port}/v1")
    finally:
        server.should_exit = True
        await serving


@pytest_asyncio.fixture
async def start_simulator(database_url) -> AsyncIterator[StartSimulator]:
    """Starts simulators on the test database; all are stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(**config: Any) -> RunningSimulator:
            app = create_simulator_app(database_url, SimulatorConfig(**config))
            return await stack.enter_async_context(_serving(app))

        yield start


async def insert_test_set(pool, cases: list[tuple[dict[str, Any], str | None]],
                          ) -> int:
    """A new test set holding `cases` as (input, expected output) pairs."""
    async with pool.acquire() as conn, conn.transaction():
        test_set_id = await conn.fetchval(
            "INSERT INTO test_sets (name, workspace_id)"
            " SELECT $1, id FROM workspaces WHERE name = 'default' RETURNING id",
            f"simulator-{uuid.uuid4().hex}")
        await conn.executemany(
            "INSERT INTO test_cases (test_set_id, position, input, expected_output)"
            " VALUES ($1, $2, $3, $4)",
            [(test_set_id, position, case_input, expected)
             for position, (case_input, expected) in enumerate(cases)])
    return test_set_id


def unique(text: str) -> str:
    """`text` made unique to this run, so no other test's case matches it."""
    return f"{text} [{uuid.uuid4().hex}]"


def unheard_of() -> str:
    """A prompt no stored case can be found in: other tests store cases with
    inputs as short as one letter, which any ordinary words could hold, but
    none made of private-use characters."""
    return "".join(chr(0xE000 + int(digit, 16)) for digit in uuid.uuid4().hex)


def arithmetic_cases(num_cases: int) -> list[tuple[dict[str, Any], str]]:
    return [({"question": unique(f"What is {i} plus {i + 1}?")}, str(2 * i + 1))
            for i in range(num_cases)]


class TestAnswers:
    async def test_accuracy_one_answers_every_expected_output(self, pool,
                                                              start_simulator):
        context = unique("Ada Lovelace wrote the first published program. " * 5)
        cases = [
            ({"question": unique("How many apples are left?")}, "#### 72"),
            ({"question": unique("Name the capital of France.")}, "Paris"),
            # Two cases share their longest value; the other values decide.
            ({"context": context, "question": "Who wrote it?", "number": 17},
             "Ada Lovelace"),
            ({"context": context, "question": "What did she write?", "number": 18},
             "The first published program"),
        ]
        await insert_test_set(pool, cases)
        simulator = await start_simulator(accuracy=1.0)
        template = jinja2.Template(
            "{{ context }}\n\nQuestion {{ number }}: {{ question }}")

        answers = [
            await simulator.ask(TEMPLATE.render(cases[0][0])),
            await simulator.ask(TEMPLATE.render(cases[1][0]), system=None),
            await simulator.ask(template.render(cases[2][0])),
            await simulator.ask(template.render(cases[3][0])),
        ]

        assert answers == [expected for _, expected in cases]

    async def test_accuracy_zero_never_answers_the_expected_output(
            self, pool, start_simulator):
        numeric = [
            ({"question": unique("Natalia sold clips; how many in all?")},
             "Natalia sold 48/2 = 24 clips in May.\n#### 72"),
            ({"question": unique("What is 6 times 7?")}, "42"),
            ({"question": unique("What is 1 minus 4.5?")}, "-3.5"),
            ({"question": unique("How many pages in total?")}, "1,234"),
            ({"question": unique("How many were there at first?")}, "0"),
        ]
        capitals = [({"country": unique(country)}, capital) for country, capital in
                    [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid")]]
        lonely = [({"question": unique("Who painted the Mona Lisa?")},
                   "Leonardo da Vinci")]
        for cases in (numeric, capitals, lonely):
            await insert_test_set(pool, cases)
        simulator = await start_simulator(accuracy=0.0)

        numeric_answers = [await simulator.ask(TEMPLATE.render(case_input))
                           for case_input, _ in numeric]
        capital_answers = [await simulator.ask(f"Capital of {case_input['country']}?")
                           for case_input, _ in capitals]
        lonely_answer = await simulator.ask(TEMPLATE.render(lonely[0][0]))

        for (_, expected), answer in zip(numeric, numeric_answers):
            assert answer != expected
            expected_head, expected_number = _split_final_number(expected)
            answer_head, answer_number = _split_final_number(answer)
            assert answer_head == expected_head
            assert _number_format(answer_number) == _number_format(expected_number)
            if "," in expected_number:
                assert re.fullmatch(r"\d{1,3}(,\d{3})*", answer_number)
        for (_, expected), answer in zip(capitals, capital_answers):
            assert answer != expected
            assert answer in {"Paris", "Rome", "Madrid"}
        assert lonely_answer not in ("Leonardo da Vinci", UNKNOWN_PROMPT_REPLY)

    async def test_mid_accuracy_gives_about_that_share_and_the_seed_repeats_it(
            self, pool, start_simulator):
        cases = [({"question": unique(f"Spell the number {i} in words.")},
                  f"answer number {i}") for i in range(200)]
        await insert_test_set(pool, cases)
        prompts = [TEMPLATE.render(case_input) for case_input, _ in cases]
        first, again, other_seed = [
            await start_simulator(accuracy=0.5, seed=seed) for seed in (7, 7, 8)]

        answers = await _ask_all(first, prompts)
        answers_again = await _ask_all(again, prompts)
        answers_other_seed = await _ask_all(other_seed, prompts)

        num_correct = sum(answer == expected
                          for answer, (_, expected) in zip(answers, cases))
        assert 0.35 <= num_correct / len(cases) <= 0.65
        assert answers_again == answers
        assert answers_other_seed != answers

    async def test_a_case_inserted_after_start_up_is_recognised(
            self, pool, start_simulator):
        simulator = await start_simulator(accuracy=1.0)
        prompt = unheard_of()
        case_input, expected = {"question": prompt}, "42"
        assert await simulator.ask(prompt) == UNKNOWN_PROMPT_REPLY

        await insert_test_set(pool, [(case_input, expected)])

        # New cases are looked for at most every 0.2 s, so allow a few tries.
        deadline = time.monotonic() + 3
        answer = await simulator.ask(prompt)
        while answer != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            answer = await simulator.ask(prompt)
        assert answer == expected

    async def test_a_burst_of_unknown_prompts_queries_the_database_only_a_few_times(
            self, start_simulator):
        simulator = await start_simulator()
        state = simulator.app.state.simulator
        num_loads_before = state.num_loads

        started_at = time.monotonic()
        answers = await _ask_all(simulator, [unheard_of() for _ in range(100)])
        elapsed_s = time.monotonic() - started_at

        assert set(answers) == {UNKNOWN_PROMPT_REPLY}
        # One look for new test cases per 0.2 s at most, plus the one a burst
        # starting right away may make.
        assert state.num_loads - num_loads_before <= 1 + elapsed_s / 0.2

    async def test_unknown_prompts_and_cases_without_answers_get_neutral_replies(
            self, pool, start_simulator):
        case_input = {"question": unique("Tell me a story.")}
        await insert_test_set(pool, [(case_input, None)])
        simulator = await start_simulator(accuracy=1.0)

        assert await simulator.ask(TEMPLATE.render(case_input)) == (
            NO_EXPECTED_OUTPUT_REPLY)
        assert await simulator.ask(unheard_of()) == UNKNOWN_PROMPT_REPLY

    async def test_latency_slows_every_call_down(self, start_simulator):
        simulator = await start_simulator(latency_ms=200)

        started_at = time.monotonic()
        await simulator.ask(unique("Are you slow?"))

        assert time.monotonic() - started_at >= 0.16


class TestFailures:
    async def test_error_rate_one_answers_429_then_500(self, start_simulator):
        simulator = await start_simulator(error_rate=1.0)
        prompt = unique("Will this fail?")

        with pytest.raises(openai.RateLimitError) as rate_limited:
            await simulator.ask(prompt)
        with pytest.raises(openai.InternalServerError) as server_error:
            await simulator.ask(prompt)

        assert rate_limited.value.status_code == 429
        assert rate_limited.value.response.headers["Retry-After"] == "1"
        assert rate_limited.value.response.headers["retry-after-ms"] == "50"
        assert rate_limited.value.body["type"] == "rate_limit_error"
        assert server_error.value.status_code == 500
        assert server_error.value.body["type"] == "server_error"

    async def test_the_openai_client_retries_both_failures(self, start_simulator):
        simulator = await start_simulator(error_rate=1.0)
        num_requests_before = simulator.num_requests

        async with simulator.client(max_retries=2) as client:
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": unique("Hi")}])

        # 429, then 500, then 429 again: the first call and two retries.
        assert simulator.num_requests - num_requests_before == 3
        assert simulator.app.state.simulator.num_failures == 3


class TestProtocol:
    async def test_usage_counts_words_of_the_prompt_and_the_answer(
            self, pool, start_simulator):
        case_input = {"question": unique("one two three")}
        await insert_test_set(pool, [(case_input, "four five")])
        simulator = await start_simulator(accuracy=1.0)

        async with simulator.client() as client:
            completion = await client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": case_input["question"]}])

        assert completion.model == "gpt-test"
        assert completion.choices[0].message.role == "assistant"
        assert completion.choices[0].message.content == "four five"
        assert completion.choices[0].finish_reason == "stop"
        # "Be brief." is 2 words, the question 3 plus its uuid tag.
        assert completion.usage.prompt_tokens == 6
        assert completion.usage.completion_tokens == 2
        assert completion.usage.total_tokens == 8

    async def test_models_lists_the_simulator(self, start_simulator):
        simulator = await start_simulator()

        async with simulator.client() as client:
            models = [model async for model in client.models.list()]

        assert [(model.id, model.owned_by) for model in models] == [
            ("assay-simulator", "assay")]

    async def test_streaming_is_refused_with_a_400(self, start_simulator):
        simulator = await start_simulator()

        async with simulator.client() as client:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "Hi"}],
                    stream=True)

        assert "streaming is not supported" in refused.value.message

    @pytest.mark.parametrize("body", [
        b"{not json",
        b"[1, 2]",
        b'{"model": "m"}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"content": "no role"}]}',
    ])
    async def test_a_malformed_body_is_a_400(self, start_simulator, body):
        simulator = await start_simulator()

        async with httpx2.AsyncClient(base_url=simulator.base_url) as http:
            response = await http.post(
                "/chat/completions", content=body,
                headers={"content-type": "application/json"})

        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["message"]


class TestCaseIndex:
    def test_finds_the_case_among_100000(self):
        index = CaseIndex()
        for case_id in range(1, 100_001):
            index.add(KnownCase.from_row(
                case_id, 1 + case_id % 7,
                {"question": f"Case {case_id}: how many marbles does Sam have?",
                 "n": case_id},
                str(case_id)))

        prompt = TEMPLATE.render(
            question="Case 73191: how many marbles does Sam have?")

        assert index.match(prompt).id == 73191
        assert index.match("Case 100002: how many marbles does Sam have?") is None


class TestCommandLine:
    def test_defaults(self):
        parser = argparse.ArgumentParser()
        add_arguments(parser)

        args = parser.parse_args([])

        assert (args.host, args.port, args.accuracy, args.latency_ms,
                args.error_rate, args.seed) == ("127.0.0.1", 8001, 0.8, 0, 0, 0)

    @pytest.mark.parametrize("argv, flag", [
        (["--accuracy", "1.5"], "--accuracy"),
        (["--error-rate", "-0.1"], "--error-rate"),
        (["--latency-ms", "nan"], "--latency-ms"),
        (["--port", "70000"], "--port"),
        (["--seed", "x"], "--seed"),
    ])
    def test_rejects_a_bad_value_naming_the_flag(self, capsys, argv, flag):
        parser = argparse.ArgumentParser()
        add_arguments(parser)

        with pytest.raises(SystemExit):
            parser.parse_args(argv)

        assert f"argument {flag}:" in capsys.readouterr().err

    def test_config_rejects_an_accuracy_outside_0_to_1(self):
        with pytest.raises(ValueError, match="accuracy"):
            SimulatorConfig(accuracy=2)


async def _ask_all(simulator: RunningSimulator, prompts: list[str]) -> list[str]:
    async with simulator.client() as client:
        limit = asyncio.Semaphore(16)

        async def ask(prompt: str) -> str:
            async with limit:
                completion = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": prompt}])
            return completion.choices[0].message.content

        return await asyncio.gather(*(ask(prompt) for prompt in prompts))


_FINAL_NUMBER = re.compile(r"(-?[\d,]*\d(?:\.\d+)?)$")


def _split_final_number(text: str) -> tuple[str, str]:
    found = _FINAL_NUMBER.search(text)
    assert found is not None, f"{text!r} does not end with a number"
    return text[:found.start()], found.group(1)


def _number_format(number: str) -> tuple[bool, int]:
    """Whether the number is negative, and how many decimals it has."""
    return number.startswith("-"), len(number.partition(".")[2])
