"""`assay import` end to end, against a fake Assay API served on loopback.

The fake is a small Starlette app under uvicorn that answers the three
mutations the importer uses and records every request it gets, so the tests
can check what reached the server, in what order, and what did not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.importer.command import add_arguments, api_url, run

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO.parent / "shared" / "datasets"

_MUTATION_FIELD = re.compile(
    r"\b(createTestSet|appendTestCaseLines|deleteTestSet)\s*\(")


class FakeAssayApi:
    """Answers createTestSet, appendTestCaseLines and deleteTestSet like the real
    API would for a well-formed request, and can be told to fail one call."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.authorizations: list[str | None] = []
        self.test_sets: dict[str, dict[str, Any]] = {}
        # The test cases of each createTestSet and appendTestCaseLines.
        self.batches: list[list[dict[str, Any]]] = []
        self.failing_call: tuple[str, int] | None = None
        self.failing_message = "test case 2 has an empty input"
        self.failing_code = "BAD_USER_INPUT"
        self.hanging_call: tuple[str, int] | None = None
        self.hung = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def fields_called(self) -> list[str]:
        return [field for field, _ in self.requests]

    async def graphql(self, request: Request) -> JSONResponse:
        body = await request.json()
        field = _MUTATION_FIELD.search(body["query"]).group(1)
        variables = body["variables"]
        self.requests.append((field, variables))
        self.authorizations.append(request.headers.get("authorization"))
        call = (field, self.fields_called.count(field))

        if call == self.hanging_call:
            self.hung.set()
            await self.release.wait()
        if call == self.failing_call:
            return _graphql_error(self.failing_message, self.failing_code)
        if field == "createTestSet":
            test_set_id = f"ts_{len(self.test_sets) + 1}"
            self.test_sets[test_set_id] = {"name": variables["input"]["name"],
                                           "cases": []}
            cases = variables["input"]["testCases"]
        else:
            test_set_id = variables.get("testSetId") or variables["id"]
            cases = [json.loads(line) for line
                     in variables.get("jsonLines", "").split("\n") if line]
        if test_set_id not in self.test_sets:
            return _graphql_error(f"no test set {test_set_id}", "NOT_FOUND")
        if field != "deleteTestSet":
            self.batches.append(cases)

        if field == "deleteTestSet":
            del self.test_sets[test_set_id]
            return JSONResponse({"data": {field: test_set_id}})
        return JSONResponse({"data": {field: self._add(test_set_id, cases)}})

    def _add(self, test_set_id: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
        test_set = self.test_sets[test_set_id]
        test_set["cases"].extend(cases)
        names = sorted({case["category"] for case in test_set["cases"]
                        if "category" in case})
        return {"id": test_set_id, "name": test_set["name"],
                "testCaseCount": len(test_set["cases"]),
                "categories": [{"name": name} for name in names]}


def _graphql_error(message: str, code: str) -> JSONResponse:
    return JSONResponse({"data": None, "errors": [
        {"message": message, "extensions": {"code": code}}]},
        status_code=401 if code == "UNAUTHENTICATED" else 200)


@pytest_asyncio.fixture
async def fake_api():
    fake = FakeAssayApi()
    app = Starlette(routes=[Route("/graphql", fake.graphql, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", ws="none", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or serving.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the fake Assay API did not start"

    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}/graphql"
    try:
        yield fake
    finally:
        fake.release.set()
        server.should_exit = True
        await serving
        sock.close()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="assay import")
    add_arguments(parser)
    return parser.parse_args(argv)


def write_cases(tmp_path: Path, num_cases: int) -> Path:
    path = tmp_path / "arithmetic.jsonl"
    lines = [json.dumps({"question": f"{n} + {n}?", "answer": 2 * n,
                         "category": "even" if n % 2 == 0 else "odd"})
             for n in range(1, num_cases + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_cases_are_sent_in_batches_create_then_append(tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 5)

    exit_code = await run(parse(str(path), "--name", "Arithmetic", "--url",
                                fake_api.url, "--batch-size", "2"))

    assert exit_code == 0
    assert fake_api.fields_called == [
        "createTestSet", "appendTestCaseLines", "appendTestCaseLines"]
    assert [len(batch) for batch in fake_api.batches] == [2, 2, 1]
    assert {variables.get("testSetId") for _, variables in fake_api.requests[1:]} \
        == {"ts_1"}
    assert capsys.readouterr().out == (
        'Created test set "Arithmetic" (id ts_1) with 5 test cases '
        "in 2 categories.\n")


async def test_every_request_carries_the_api_key(tmp_path, fake_api):
    path = write_cases(tmp_path, 5)

    exit_code = await run(parse(str(path), "--name", "Keyed", "--url",
                                fake_api.url, "--batch-size", "2"),
                          api_key="assay_example")

    assert exit_code == 0
    assert fake_api.authorizations == ["Bearer assay_example"] * 3


async def test_an_unauthenticated_import_says_to_set_the_key(tmp_path, fake_api,
                                                             capsys):
    fake_api.failing_call = ("createTestSet", 1)
    fake_api.failing_code = "UNAUTHENTICATED"
    fake_api.failing_message = "no API key: send the header"

    exit_code = await run(parse(str(write_cases(tmp_path, 2)), "--name", "X",
                                "--url", fake_api.url))

    assert exit_code == 1
    assert "set ASSAY_API_KEY" in capsys.readouterr().err


async def test_each_case_carries_input_expected_category_and_source_line(
        tmp_path, fake_api):
    path = write_cases(tmp_path, 3)

    await run(parse(str(path), "--name", "Arithmetic", "--url", fake_api.url,
                    "--description", "Doubling small numbers"))

    _, variables = fake_api.requests[0]
    assert variables["input"]["name"] == "Arithmetic"
    assert variables["input"]["description"] == "Doubling small numbers"
    assert variables["input"]["testCases"][2] == {
        "input": {"question": "3 + 3?"},
        "expectedOutput": "6",
        "category": "odd",
        "metadata": {"source_line": 3},
    }


async def test_a_base_url_without_graphql_reaches_the_api(tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 1)
    base_url = fake_api.url.removesuffix("/graphql") + "/"

    exit_code = await run(parse(str(path), "--name", "One", "--url", base_url))

    assert exit_code == 0
    assert fake_api.fields_called == ["createTestSet"]
    assert "with 1 test case in 1 category." in capsys.readouterr().out


async def test_a_bad_file_sends_nothing_and_names_the_bad_line(
        tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 700)
    with path.open("a", encoding="utf-8") as file:
        file.write('{"question": "last?", "answer": 1,\n')

    exit_code = await run(parse(str(path), "--name", "Broken", "--url",
                                fake_api.url))

    assert exit_code == 1
    assert fake_api.requests == []
    err = capsys.readouterr().err
    # The line is cut short: wrong at its end, column 35, not at column 1.
    assert err == (f"assay import: {path}:701: invalid JSON: Expecting property"
                   " name enclosed in double quotes (column 35)\n")


@pytest.mark.parametrize(("line_701", "message"), [
    ('{"question": "\\u0000", "answer": 1}',
     "input.question: contains a NUL character, which cannot be stored"),
    (json.dumps({"question": "q", "answer": "7" * 100_001}),
     "expectedOutput: is 100001 characters long; at most 100000 allowed"),
    ('{"question": %s}' % ("[" * 40 + "]" * 40),
     "input.question" + "[0]" * 32 + ": is nested deeper than 32 levels"),
    (json.dumps({"question": "q", "category": "c" * 201}),
     "category: is 201 characters long; at most 200 allowed"),
    ('{"question": "q", "answer": 1, "category": "odd", "weight": Infinity}',
     "input.weight: inf is not a JSON number (too large, infinite or NaN)"),
    ('{"question": NaN}',
     "input.question: nan is not a JSON number (too large, infinite or NaN)"),
])
async def test_a_test_case_the_api_would_refuse_sends_nothing_and_names_its_line(
        tmp_path, fake_api, capsys, line_701, message):
    path = write_cases(tmp_path, 700)
    with path.open("a", encoding="utf-8") as file:
        file.write(line_701 + "\n")

    exit_code = await run(parse(str(path), "--name", "Checked", "--url",
                                fake_api.url))

    assert exit_code == 1
    assert fake_api.requests == []
    assert capsys.readouterr().err == f"assay import: {path}:701: {message}\n"


async def test_a_lone_surrogate_is_reported_as_a_bad_line_not_a_traceback(
        tmp_path, fake_api, capsys):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"question":"\\ud800","answer":"1"}\n', encoding="utf-8")

    exit_code = await run(parse(str(path), "--name", "X", "--url", fake_api.url))

    assert exit_code == 1
    assert fake_api.requests == []
    assert capsys.readouterr().err == (
        f"assay import: {path}:1: input.question: contains a lone surrogate, "
        "which is not valid Unicode\n")


@pytest.mark.parametrize(("name", "message"), [
    ("n" * 201, "--name: is 201 characters long; at most 200 allowed"),
    ("  ", "--name: must not be empty"),
    # What a name given as bytes that are not UTF-8 turns into in sys.argv.
    ("caf\udce9", "--name: contains a lone surrogate, which is not valid Unicode"),
])
async def test_a_name_the_api_would_refuse_sends_nothing(
        tmp_path, fake_api, capsys, name, message):
    path = write_cases(tmp_path, 2)

    exit_code = await run(parse(str(path), "--name", name, "--url", fake_api.url))

    assert exit_code == 1
    assert fake_api.requests == []
    assert capsys.readouterr().err == f"assay import: {message}\n"


async def test_a_missing_named_field_sends_nothing(tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 3)

    exit_code = await run(parse(str(path), "--name", "X", "--url", fake_api.url,
                                "--input-field", "prompt"))

    assert exit_code == 1
    assert fake_api.requests == []
    assert f"{path}:1: the record has no input field 'prompt'" in \
        capsys.readouterr().err


async def test_a_failing_append_deletes_the_test_set_and_exits_non_zero(
        tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 5)
    fake_api.failing_call = ("appendTestCaseLines", 2)

    exit_code = await run(parse(str(path), "--name", "Arithmetic", "--url",
                                fake_api.url, "--batch-size", "2"))

    assert exit_code == 1
    assert fake_api.fields_called == [
        "createTestSet", "appendTestCaseLines", "appendTestCaseLines", "deleteTestSet"]
    assert fake_api.requests[-1][1] == {"id": "ts_1"}
    assert fake_api.test_sets == {}
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err == (
        "assay import: appendTestCaseLines failed: test case 2 has an empty input "
        "[BAD_USER_INPUT]; the partly imported test set ts_1 was deleted\n")


async def test_a_test_case_the_server_refuses_is_named_by_its_line_in_the_file(
        tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 5)
    path.write_text("\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    fake_api.failing_call = ("appendTestCaseLines", 1)
    fake_api.failing_message = (
        "jsonLines line 2.input.question: contains a NUL character, which cannot"
        " be stored")

    exit_code = await run(parse(str(path), "--name", "Arithmetic", "--url",
                                fake_api.url, "--batch-size", "2"))

    assert exit_code == 1
    assert fake_api.test_sets == {}
    # The second batch holds the file's third and fourth cases, on lines 4
    # and 5 behind the blank first line.
    assert capsys.readouterr().err == (
        f"assay import: {path}:5: input.question: contains a NUL character, "
        "which cannot be stored (the server refused this test case); the partly "
        "imported test set ts_1 was deleted\n")


@pytest.mark.parametrize(("message", "reported"), [
    ("input.testCases[2].expectedOutput: is too long",
     "{path}:3: expectedOutput: is too long (the server refused this test case)"),
    ("input.testCases[2]: must be an object",
     "{path}:3: must be an object (the server refused this test case)"),
    ("input.testCases[9].input: out of the batch",
     "createTestSet failed: input.testCases[9].input: out of the batch "
     "[BAD_USER_INPUT]"),
    ("input.name: is taken",
     "createTestSet failed: input.name: is taken [BAD_USER_INPUT]"),
])
async def test_a_refused_create_names_the_line_only_of_a_case_in_its_batch(
        tmp_path, fake_api, capsys, message, reported):
    path = write_cases(tmp_path, 5)
    fake_api.failing_call = ("createTestSet", 1)
    fake_api.failing_message = message

    exit_code = await run(parse(str(path), "--name", "Arithmetic", "--url",
                                fake_api.url, "--batch-size", "3"))

    assert exit_code == 1
    assert fake_api.fields_called == ["createTestSet"]
    assert capsys.readouterr().err == (
        f"assay import: {reported.format(path=path)}\n")


async def test_an_interrupted_import_deletes_the_test_set(tmp_path, fake_api):
    path = write_cases(tmp_path, 5)
    fake_api.hanging_call = ("appendTestCaseLines", 1)
    importing = asyncio.create_task(run(parse(
        str(path), "--name", "Arithmetic", "--url", fake_api.url,
        "--batch-size", "2")))
    await asyncio.wait_for(fake_api.hung.wait(), timeout=10)

    importing.cancel()  # what Ctrl-C does to the command's task
    with pytest.raises(asyncio.CancelledError):
        await importing

    assert fake_api.fields_called == [
        "createTestSet", "appendTestCaseLines", "deleteTestSet"]
    assert fake_api.test_sets == {}


async def test_an_import_interrupted_while_creating_deletes_what_the_server_stored(
        tmp_path, fake_api):
    path = write_cases(tmp_path, 5)
    fake_api.hanging_call = ("createTestSet", 1)
    importing = asyncio.create_task(run(parse(
        str(path), "--name", "Arithmetic", "--url", fake_api.url,
        "--batch-size", "2")))
    await asyncio.wait_for(fake_api.hung.wait(), timeout=10)

    importing.cancel()
    fake_api.release.set()  # the server stores the test set after all
    with pytest.raises(asyncio.CancelledError):
        await importing

    assert fake_api.fields_called == ["createTestSet", "deleteTestSet"]
    assert fake_api.test_sets == {}


async def test_sigterm_deletes_the_test_set_and_exits_143(tmp_path, fake_api):
    path = write_cases(tmp_path, 5)
    fake_api.hanging_call = ("appendTestCaseLines", 1)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "import", str(path), "--name",
        "Arithmetic", "--url", fake_api.url, "--batch-size", "2",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(fake_api.hung.wait(), timeout=60)
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()

    assert process.returncode == 143
    assert fake_api.fields_called == [
        "createTestSet", "appendTestCaseLines", "deleteTestSet"]
    assert fake_api.test_sets == {}
    assert out == b""
    assert b"the partly imported test set ts_1 was deleted" in err


async def test_a_failing_create_has_nothing_to_delete(tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 5)
    fake_api.failing_call = ("createTestSet", 1)

    exit_code = await run(parse(str(path), "--name", "Arithmetic", "--url",
                                fake_api.url))

    assert exit_code == 1
    assert fake_api.fields_called == ["createTestSet"]
    assert capsys.readouterr().err == (
        "assay import: createTestSet failed: test case 2 has an empty input "
        "[BAD_USER_INPUT]\n")


async def test_a_server_that_does_not_answer_is_named_in_the_error(tmp_path, capsys):
    path = write_cases(tmp_path, 2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/graphql"
    # The port is free again: nothing listens there.

    exit_code = await run(parse(str(path), "--name", "X", "--url", url))

    assert exit_code == 1
    assert capsys.readouterr().err.startswith(
        f"assay import: cannot reach the Assay API at {url}: ")


async def test_an_unknown_extension_without_format_sends_nothing(
        tmp_path, fake_api, capsys):
    path = tmp_path / "cases.txt"
    path.write_text('{"question": "q"}\n', encoding="utf-8")

    exit_code = await run(parse(str(path), "--name", "X", "--url", fake_api.url))

    assert exit_code == 1
    assert fake_api.requests == []
    assert "--format" in capsys.readouterr().err

    assert await run(parse(str(path), "--name", "X", "--url", fake_api.url,
                           "--format", "jsonl")) == 0


async def test_a_csv_with_semicolons_is_split_at_them_and_says_so(
        tmp_path, fake_api, capsys):
    path = tmp_path / "cases.csv"
    path.write_text("question;answer\n1,5 + 1?;2,5\n", encoding="utf-8")

    exit_code = await run(parse(str(path), "--name", "Decimals", "--url",
                                fake_api.url))

    assert exit_code == 0
    assert fake_api.test_sets["ts_1"]["cases"][0]["input"] == {"question": "1,5 + 1?"}
    assert fake_api.test_sets["ts_1"]["cases"][0]["expectedOutput"] == "2,5"
    assert capsys.readouterr().err == (
        f"assay import: reading {path} with ';' as the delimiter\n")


@pytest.mark.parametrize(("delimiter", "content"), [
    ("|", "question;note|answer\na;b|1\n"),
    (",", "question;note,answer\na;b,1\n"),
    ("\\t", "question;note\tanswer\na;b\t1\n"),
])
async def test_a_given_delimiter_overrides_the_one_the_header_suggests(
        tmp_path, fake_api, capsys, delimiter, content):
    path = tmp_path / "cases.csv"
    path.write_text(content, encoding="utf-8")

    exit_code = await run(parse(str(path), "--name", "Piped", "--url",
                                fake_api.url, "--delimiter", delimiter))

    assert exit_code == 0
    assert fake_api.test_sets["ts_1"]["cases"][0]["input"] == {"question;note": "a;b"}
    assert capsys.readouterr().err == ""


async def test_a_delimiter_for_a_file_that_is_not_csv_sends_nothing(
        tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 2)

    exit_code = await run(parse(str(path), "--name", "X", "--url", fake_api.url,
                                "--delimiter", ";"))

    assert exit_code == 1
    assert fake_api.requests == []
    assert "only for a CSV file" in capsys.readouterr().err


@pytest.mark.parametrize("delimiter", ["", ";;", '"', "\n"])
def test_delimiter_must_be_one_character_other_than_quote_or_newline(
        delimiter, capsys):
    with pytest.raises(SystemExit) as caught:
        parse("cases.csv", "--name", "X", "--delimiter", delimiter)

    assert caught.value.code == 2
    assert "--delimiter" in capsys.readouterr().err


@pytest.mark.skipif(not DATASETS.is_dir(),
                    reason=f"the public datasets are not at {DATASETS}")
async def test_gsm8k_is_imported_in_three_batches(fake_api, capsys):
    path = DATASETS / "gsm8k" / "test.jsonl"

    exit_code = await run(parse(str(path), "--name", "GSM8K", "--url", fake_api.url,
                                "--batch-size", "500"))

    assert exit_code == 0
    assert fake_api.fields_called == [
        "createTestSet", "appendTestCaseLines", "appendTestCaseLines"]
    assert capsys.readouterr().out == (
        'Created test set "GSM8K" (id ts_1) with 1319 test cases '
        "in 0 categories.\n")


@pytest.mark.skipif(not DATASETS.is_dir(),
                    reason=f"the public datasets are not at {DATASETS}")
async def test_mgsm_without_header_is_imported_by_column_names(fake_api, capsys):
    path = DATASETS / "mgsm" / "mgsm_es.tsv"

    exit_code = await run(parse(
        str(path), "--name", "MGSM es", "--url", fake_api.url, "--no-header",
        "--input-field", "column1", "--expected-field", "column2"))

    assert exit_code == 0
    case = fake_api.test_sets["ts_1"]["cases"][213]
    assert case["input"]["column1"].startswith("Mientras está en la tienda \"Todo")
    assert case["expectedOutput"] == "250"
    assert "with 250 test cases in 0 categories." in capsys.readouterr().out


@pytest.mark.parametrize(("given", "expected"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/graphql"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/graphql"),
    ("http://127.0.0.1:8000/graphql", "http://127.0.0.1:8000/graphql"),
    ("https://127.0.0.1:8443/api/", "https://127.0.0.1:8443/api/graphql"),
])
def test_the_api_url_may_be_given_as_the_base_url(given, expected):
    assert api_url(given) == expected


def test_a_url_without_scheme_is_rejected():
    with pytest.raises(ValueError, match="http"):
        api_url("127.0.0.1:8000")


@pytest.mark.parametrize("batch_size", ["0", "-3", "many"])
def test_batch_size_must_be_a_positive_whole_number(batch_size, capsys):
    with pytest.raises(SystemExit) as caught:
        parse("cases.jsonl", "--name", "X", "--batch-size", batch_size)

    assert caught.value.code == 2
    assert "--batch-size" in capsys.readouterr().err



def test_batches_are_cut_by_count_and_by_size_of_their_json_lines():
    from app.importer.command import _batches

    cases = [{"input": {"q": "é" * n}, "metadata": {"source_line": n}}
             for n in (1, 2, 30, 1, 1, 1)]
    lines = [json.dumps(case, ensure_ascii=False) for case in cases]
    # Room for the first two cases in bytes (é is two), not for the third.
    room = len(lines[0].encode()) + len(lines[1].encode()) + 2

    batches = list(_batches(cases, 2, max_bytes=room))

    assert [len(batch) for batch, _ in batches] == [2, 1, 2, 1]
    assert [text for _, text in batches] == [
        "\n".join(lines[0:2]), lines[2], "\n".join(lines[3:5]), lines[5]]
    # A case larger than the limit alone still goes, by itself.
    assert [len(b) for b, _ in _batches(cases, 10, max_bytes=10)] == [1] * 6


async def test_a_batch_over_the_servers_cap_says_which_batch_size_it_takes(
        tmp_path, fake_api, capsys):
    path = write_cases(tmp_path, 5)
    fake_api.failing_call = ("createTestSet", 1)
    fake_api.failing_message = ("input.testCases: 5 test cases in one request;"
                                " at most 3 (send more with appendTestCases)")

    exit_code = await run(parse(str(path), "--name", "Capped", "--url",
                                fake_api.url))

    assert exit_code == 1
    assert fake_api.test_sets == {}
    assert capsys.readouterr().err.endswith(
        "the server takes at most 3 test cases a request: use --batch-size 3"
        " or less\n")
