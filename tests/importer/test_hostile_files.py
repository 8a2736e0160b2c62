"""Hostile test-set files, imported with `assay import` into a real API.

Each file is either refused with a message naming its line (or the file, when
it holds nothing to import) and leaves no test set behind, or is imported
with every value exactly as the file holds it. Extends test_readers.py and
test_command.py, whose cases are not repeated here.
"""

from __future__ import annotations

import argparse
import codecs
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from app.importer import readers
from app.importer.command import add_arguments, run
from app.importer.readers import FieldOptions, ImportFileError, read_test_cases
from tests.factories import unique
from tests.stack import running_stack

BOM = codecs.BOM_UTF8

CASES = """
query($id: ID!) {
  testSet(id: $id) {
    name testCaseCount
    testCases(first: 500) {
      edges { node { input expectedOutput metadata category { name } } }
    }
  }
}"""


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="assay import")
    add_arguments(parser)
    return parser.parse_args(argv)


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


async def import_file(stack, capsys, path: Path, name: str,
                      *options: str) -> tuple[int, str]:
    """Run `assay import` against the stack's API; its exit code and stderr."""
    exit_code = await run(parse(str(path), "--name", name, "--url",
                                stack.graphql_url, *options), api_key=stack.key)
    return exit_code, capsys.readouterr().err


async def ids_named(pool, name: str) -> list[int]:
    """The row ids of the test sets called `name`."""
    return [record["id"] for record in await pool.fetch(
        "SELECT id FROM test_sets WHERE name = $1", name)]


async def row_counts(pool) -> dict[str, int]:
    return dict(await pool.fetchrow(
        "SELECT (SELECT count(*) FROM test_sets) AS test_sets,"
        " (SELECT count(*) FROM categories) AS categories,"
        " (SELECT count(*) FROM test_cases) AS test_cases"))


async def stored_cases(stack, test_set_id: int) -> list[dict[str, Any]]:
    data = await stack.query(CASES, id=f"ts_{test_set_id}")
    cases = []
    for edge in data["testSet"]["testCases"]["edges"]:
        node = edge["node"]
        case = {"input": node["input"], "line": node["metadata"]["source_line"]}
        if node["expectedOutput"] is not None:
            case["expectedOutput"] = node["expectedOutput"]
        if node["category"] is not None:
            case["category"] = node["category"]["name"]
        cases.append(case)
    return cases


# --- files refused with their line -------------------------------------------

TOO_LONG_CELL = b"x" * 200_000

REFUSED_FILES = [
    # Encodings that are not UTF-8.
    pytest.param("cases.jsonl", '{"q": "x"}\n'.encode("utf-16"), (), 1,
                 "invalid UTF-8: byte 0xff at byte 1 of the line",
                 id="jsonl-in-utf16-with-its-bom"),
    pytest.param("cases.csv", "q,a\nx,1\n".encode("utf-16-le"), (), 1,
                 "the header's column 1 ('q\\x00') contains a NUL character",
                 id="csv-in-utf16-without-a-bom"),
    pytest.param("cases.tsv", b"q\ta\nok\t1\ncaf\xe9\t2\n", (), 3,
                 "invalid UTF-8: byte 0xe9 at byte 4 of the line",
                 id="tsv-latin1-byte"),
    pytest.param("cases.csv", b"q\xff,a\nx,1\n", (), 1,
                 "invalid UTF-8: byte 0xff", id="csv-bad-byte-in-the-header"),
    pytest.param("cases.csv", b"q,a\nx\xc0\x80,1\n", (), 2,
                 "invalid UTF-8: byte 0xc0", id="csv-overlong-encoding-of-nul"),
    pytest.param("cases.jsonl", b'{"q": "ok"}\n{"q": "\xed\xa0\x80"}\n', (), 2,
                 "invalid UTF-8: byte 0xed", id="jsonl-surrogate-encoded-as-bytes"),
    pytest.param("cases.json", b'[{"q": "ok"},\n{"q": "\xed\xa0\x80"}]', (), 2,
                 "invalid UTF-8", id="json-surrogate-encoded-as-bytes"),
    pytest.param("cases.jsonl", b'{"q": "ok"}\n{"q": "\xe2\x82', (), 2,
                 "invalid UTF-8", id="jsonl-truncated-character-at-the-end"),
    # NUL bytes.
    pytest.param("cases.jsonl", b'{"q": "ok"}\n{"q": "a\x00b"}\n', (), 2,
                 "invalid JSON: Invalid control character", id="jsonl-raw-nul"),
    pytest.param("cases.json", b'[{"q": "ok"},\n {"q": "a\x00b"}]', (), 2,
                 "invalid JSON in the record starting here: Invalid control",
                 id="json-raw-nul"),
    pytest.param("cases.tsv", b"q\ta\nok\t1\nx\x00y\t2\n", (), 3,
                 "input.q: contains a NUL character", id="tsv-raw-nul"),
    pytest.param("cases.csv", b"q,answer\nok,1\nx,4\x002\n", (), 3,
                 "expectedOutput: contains a NUL character",
                 id="csv-raw-nul-in-the-expected-output"),
    pytest.param("cases.csv", b"q,category\nok,a\nx,b\x00\n", (), 3,
                 "category: contains a NUL character", id="csv-raw-nul-in-a-category"),
    pytest.param("cases.csv", b"q\x00,a\nx,1\n", (), 1,
                 "the header's column 1 ('q\\x00') contains a NUL character",
                 id="csv-raw-nul-in-the-header"),
    pytest.param("cases.tsv", b"q\ta\x00\nx\t1\n", (), 1,
                 "the header's column 2 ('a\\x00') contains a NUL character",
                 id="tsv-raw-nul-in-the-header"),
    # Surrogate escapes in JSON.
    pytest.param("cases.json", b'[{"q": "ok"},\n{"q": "\\ud800"}]', (), 2,
                 "input.q: contains a lone surrogate",
                 id="json-lone-high-surrogate"),
    pytest.param("cases.json", b'[{"q": "ok"},\n{"\\udc00": "x"}]', (), 2,
                 "input (a key): contains a lone surrogate",
                 id="json-lone-low-surrogate-in-a-key"),
    pytest.param("cases.jsonl", b'{"q": "\\ude00\\ud83d"}\n', (), 1,
                 "input.q: contains a lone surrogate",
                 id="jsonl-surrogate-pair-reversed"),
    pytest.param("cases.jsonl", b'{"q": "\\ud83d x"}\n', (), 1,
                 "input.q: contains a lone surrogate",
                 id="jsonl-high-surrogate-then-text"),
    pytest.param("cases.jsonl", b'{"q": "x", "answer": {"a": "\\ud800"}}\n', (), 1,
                 "expectedOutput: contains a lone surrogate",
                 id="jsonl-lone-surrogate-in-an-expected-object"),
    pytest.param("cases.json", b'[{"q": "x", "meta": {"k": ["\\udfff"]}}]', (), 1,
                 "input.meta.k[0]: contains a lone surrogate",
                 id="json-lone-surrogate-deep-in-a-value"),
    # Quotes, delimiters and ragged rows.
    pytest.param("cases.csv", b'q,a\nok,1\n"ab"c,1\n', (), 3,
                 "malformed CSV: ',' expected after '\"'",
                 id="csv-text-after-a-closing-quote"),
    pytest.param("cases.csv", b'q,a\nok,1\n"never closed\n', (), 3,
                 "malformed CSV: unexpected end of data",
                 id="csv-quote-unclosed-at-the-end"),
    pytest.param("cases.csv", BOM + b"q;a\r\nx;1\r\ny;2;3\r\n", (), 3,
                 "the row has 3 cells but the header has 2 columns",
                 id="csv-semicolons-detected-row-too-long"),
    pytest.param("cases.csv", b"q;a\nx;1\ny\n", ("--delimiter", ";"), 3,
                 "the row has 1 cells but the header has 2 columns",
                 id="csv-semicolons-given-row-too-short"),
    pytest.param("cases.csv", b"q,a\nx;1\n", ("--delimiter", ";"), 2,
                 "the row has 2 cells but the header has 1 columns",
                 id="csv-commas-read-with-the-semicolon-given"),
    pytest.param("cases.csv", b"q,a\nx,1,\n", (), 2,
                 "the row has 3 cells but the header has 2 columns",
                 id="csv-trailing-delimiter"),
    pytest.param("cases.tsv", BOM + b"q\ta\r\nx\t1\r\ny\r\n", (), 3,
                 "the row has 1 cells but the header has 2 columns",
                 id="tsv-bom-crlf-row-too-short"),
    pytest.param("cases.csv", b"q,a\rx,1\ry,2\r", (), 1, "malformed CSV: ",
                 id="csv-old-mac-line-ends"),
    # Huge lines and empty structures.
    pytest.param("cases.csv", b"q,a\nok,1\n" + TOO_LONG_CELL + b",2\n", (), 3,
                 "malformed CSV: field larger than field limit (131072)",
                 id="csv-cell-past-the-csv-field-limit"),
    pytest.param("cases.tsv", b"q\ta\nok\t1\n" + TOO_LONG_CELL + b"\t2\n", (), 3,
                 "malformed TSV: field larger than field limit (131072)",
                 id="tsv-cell-past-the-csv-field-limit"),
    pytest.param("cases.json", b"", (), 1, "expected a JSON array of objects",
                 id="json-empty-file"),
    pytest.param("cases.json", BOM + b"\r\n\r\n", (), 3,
                 "expected a JSON array of objects", id="json-bom-and-blank-lines"),
    pytest.param("cases.json", BOM + b'[\r\n{"q": 1},\r\n{"q": tru}\r\n]', (), 3,
                 "invalid JSON in the record starting here",
                 id="json-bom-crlf-bad-record"),
    pytest.param("cases.jsonl", BOM + b'"just text"\r\n', (), 1,
                 "the record is a JSON string, not an object",
                 id="jsonl-bom-then-a-string"),
    pytest.param("cases.jsonl", b'{"q": 1}\n' + BOM + b'{"q": 2}\n', (), 2,
                 "invalid JSON: Unexpected UTF-8 BOM",
                 id="jsonl-files-joined-with-a-bom-between"),
    pytest.param("cases.jsonl", b'{"q": 1}\r{"q": 2}\r', (), 1,
                 "invalid JSON: Extra data", id="jsonl-old-mac-line-ends"),
]


@pytest.mark.parametrize(("file_name", "content", "options", "line", "message"),
                         REFUSED_FILES)
async def test_a_bad_file_is_refused_at_its_line_and_creates_nothing(
        stack, pool, capsys, tmp_path, file_name, content, options, line, message):
    path = write(tmp_path, file_name, content)
    name = unique("refused")
    before = await row_counts(pool)

    exit_code, err = await import_file(stack, capsys, path, name, *options)

    # A note on the delimiter found may come first; the error is one line.
    *notes, error, _ = err.split("\n")
    assert exit_code == 1
    assert error.startswith(f"assay import: {path}:{line}: {message}"), err
    assert notes in ([], [f"assay import: reading {path} with ';' as the delimiter"])
    assert await ids_named(pool, name) == []
    assert await row_counts(pool) == before


@pytest.mark.parametrize(("file_name", "content", "options"), [
    pytest.param("cases.jsonl", b"", (), id="jsonl-empty"),
    pytest.param("cases.jsonl", BOM, (), id="jsonl-bom-only"),
    pytest.param("cases.jsonl", b"\r\n  \n\t\r\n", (), id="jsonl-blank-lines"),
    pytest.param("cases.json", BOM + b" [ ]\r\n", (), id="json-empty-array"),
    pytest.param("cases.csv", b"", (), id="csv-empty"),
    pytest.param("cases.csv", BOM + b"question,answer\r\n", (),
                 id="csv-header-only"),
    pytest.param("cases.csv", b"question;answer\n\n\n", (),
                 id="csv-semicolon-header-only"),
    pytest.param("cases.csv", b"q|a\n", ("--delimiter", "|"),
                 id="csv-header-only-with-a-given-delimiter"),
    pytest.param("cases.tsv", b"q\ta\r\n", (), id="tsv-header-only"),
    pytest.param("cases.tsv", b"\n\n", ("--no-header",), id="tsv-blank-no-header"),
])
async def test_a_file_without_test_cases_is_refused_and_creates_nothing(
        stack, pool, capsys, tmp_path, file_name, content, options):
    path = write(tmp_path, file_name, content)
    name = unique("empty")

    exit_code, err = await import_file(stack, capsys, path, name, *options)

    assert exit_code == 1
    assert err.endswith(f"assay import: {path}: the file has no test cases\n")
    assert await ids_named(pool, name) == []


def test_a_json_record_past_the_size_cap_is_refused_at_its_line(
        tmp_path, monkeypatch):
    # The real cap is 64 MiB; a small one shows the same path quickly.
    monkeypatch.setattr(readers, "_JSON_CHUNK_BYTES", 64)
    monkeypatch.setattr(readers, "_MAX_JSON_RECORD_CHARS", 1_000)
    path = write(tmp_path, "cases.json",
                 b'[{"q": "ok"},\n {"q": "' + b"x" * 5_000 + b'"}]')

    with pytest.raises(ImportFileError) as caught:
        list(read_test_cases(path, "json", FieldOptions()))

    assert (caught.value.line, caught.value.message) == (
        2, "the record is larger than 1000 characters")


# --- files stored exactly ----------------------------------------------------

# Right-to-left text, an emoji with a modifier, a bidi override, an
# unnormalised accent, a line separator, a NEL and a byte order mark, none of
# which ends a line of the file.
TRICKY = "مرحبا 👋🏽 \u202eRLO\u202c e\u0301 \u2028 \x85 \ufeff"
TRICKY_BYTES = TRICKY.encode("utf-8")

STORED_FILES = [
    pytest.param(
        "cases.jsonl",
        BOM + json.dumps({"q": TRICKY, "n": 1.5, "answer": " 4 \r\n",
                          "category": " sums "}, ensure_ascii=False).encode()
        + b"\r\n\r\n"
        + b'{"q": "\\ud83d\\ude00 and \\\\u0000", "answer": "\\t"}\r\n'
        + '{"שאלה 🧪": "x", "answer": "1"}\n'.encode(),
        (),
        [{"input": {"q": TRICKY, "n": 1.5}, "expectedOutput": " 4 \r\n",
          "category": "sums", "line": 1},
         {"input": {"q": "\U0001f600 and \\u0000"}, "expectedOutput": "\t",
          "line": 3},
         {"input": {"שאלה 🧪": "x"}, "expectedOutput": "1", "line": 4}],
        id="jsonl-bom-crlf-escapes-and-unicode-keys"),
    pytest.param(
        "cases.json",
        BOM + b'[\r\n  {"q": "' + TRICKY_BYTES + b'",\r\n   "answer": 42},\r\n'
        b'  {"q": ["nested", {"k": null}], "answer": true}\r\n]\r\n',
        (),
        [{"input": {"q": TRICKY}, "expectedOutput": "42", "line": 2},
         {"input": {"q": ["nested", {"k": None}]}, "expectedOutput": "true",
          "line": 4}],
        id="json-bom-crlf-records-over-lines"),
    pytest.param(
        "cases.csv",
        BOM + b'question,answer,category\r\n'
        b'"multi\r\nline, with ""quotes""",  4 ,  cat \r\n'
        b'ab"c,"",\r\n' + TRICKY_BYTES + b",x,y\r\n",
        (),
        [{"input": {"question": 'multi\r\nline, with "quotes"'},
          "expectedOutput": "  4 ", "category": "cat", "line": 2},
         {"input": {"question": 'ab"c'}, "line": 4},
         {"input": {"question": TRICKY}, "expectedOutput": "x", "category": "y",
          "line": 5}],
        id="csv-bom-crlf-quoted-cells-and-a-stray-quote"),
    pytest.param(
        "cases.csv",
        BOM + b'question;answer\r\n1,5 + 1?;2,5\r\n"a;b";"c"""\r\n',
        (),
        [{"input": {"question": "1,5 + 1?"}, "expectedOutput": "2,5", "line": 2},
         {"input": {"question": "a;b"}, "expectedOutput": 'c"', "line": 3}],
        id="csv-semicolons-detected-with-bom-and-crlf"),
    pytest.param(
        "cases.csv", b"q,note;answer\nx,y;1\n", ("--delimiter", ";"),
        [{"input": {"q,note": "x,y"}, "expectedOutput": "1", "line": 2}],
        id="csv-semicolon-given-beside-commas"),
    pytest.param(
        "cases.tsv",
        BOM + b'q\tanswer\r\n"quoted start" and end"\t"x\r\n'
        + TRICKY_BYTES + b"\t7\r\n",
        (),
        [{"input": {"q": '"quoted start" and end"'}, "expectedOutput": '"x',
          "line": 2},
         {"input": {"q": TRICKY}, "expectedOutput": "7", "line": 3}],
        id="tsv-bom-crlf-bare-quotes"),
    pytest.param(
        "cases.tsv", "שלום?\t1\r\n".encode(),
        ("--no-header", "--input-field", "column1", "--expected-field", "column2"),
        [{"input": {"column1": "שלום?"}, "expectedOutput": "1", "line": 1}],
        id="tsv-no-header-right-to-left"),
    pytest.param(
        "cases.jsonl",
        json.dumps({"q": "x" * 2_000_000, "answer": "y"}).encode() + b"\n",
        (),
        [{"input": {"q": "x" * 2_000_000}, "expectedOutput": "y", "line": 1}],
        id="jsonl-a-two-megabyte-line"),
]


@pytest.mark.parametrize(("file_name", "content", "options", "expected"),
                         STORED_FILES)
async def test_an_odd_but_valid_file_is_stored_exactly(
        stack, pool, capsys, tmp_path, file_name, content, options, expected):
    path = write(tmp_path, file_name, content)
    name = unique("stored")

    exit_code, err = await import_file(stack, capsys, path, name, *options)

    assert exit_code == 0, err
    [test_set_id] = await ids_named(pool, name)
    assert await stored_cases(stack, test_set_id) == expected


# --- duplicate names ---------------------------------------------------------


@pytest.mark.parametrize(("padding", "batch_size"), [
    pytest.param("", "500", id="same-name-one-batch"),
    pytest.param(" \t", "1", id="padded-name-a-batch-a-case"),
])
async def test_a_duplicate_name_is_refused_and_the_existing_set_is_untouched(
        stack, pool, capsys, tmp_path, padding, batch_size):
    name = unique("taken")
    first = write(tmp_path, "first.jsonl", b'{"q": 1}\n{"q": 2}\n{"q": 3}\n')
    second = write(tmp_path, "second.csv", b"q\na\nb\nc\nd\n")
    assert (await import_file(stack, capsys, first, name))[0] == 0
    [existing] = await ids_named(pool, name)
    before = await row_counts(pool)

    exit_code, err = await import_file(stack, capsys, second,
                                       f"{padding}{name}{padding}",
                                       "--batch-size", batch_size)

    assert exit_code == 1
    assert err == (f"assay import: createTestSet failed: input.name: a test set"
                   f" named {name!r} already exists [CONFLICT]\n")
    assert await ids_named(pool, name) == [existing]
    assert await row_counts(pool) == before
    assert [case["input"] for case in await stored_cases(stack, existing)] == [
        {"q": 1}, {"q": 2}, {"q": 3}]


# --- requests too large for the API ------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def small_requests_api(stack):
    """The API again, on the same database, taking requests of 4 KiB at most."""
    settings = stack.settings.replace(max_request_bytes=4096)
    async with running_stack(settings, with_worker=False) as small:
        yield small


@pytest.mark.parametrize(("batch_size", "message"), [
    pytest.param("500", "{path}:1: the test cases on lines 1-3 make a request"
                 " larger than the API accepts (the request body is larger than"
                 " 4096 bytes (ASSAY_MAX_REQUEST_BYTES)); a smaller --batch-size"
                 " sends fewer at a time\n", id="in-one-batch"),
    pytest.param("1", "{path}:2: this test case alone makes a request larger"
                 " than the API accepts (the request body is larger than 4096"
                 " bytes (ASSAY_MAX_REQUEST_BYTES)); the partly imported test set"
                 " {test_set} was deleted\n", id="one-case-a-batch"),
])
async def test_a_line_too_large_to_send_is_named_and_nothing_is_left(
        small_requests_api, pool, capsys, tmp_path, batch_size, message):
    path = write(tmp_path, "cases.jsonl", b'{"q": "small"}\n'
                 + json.dumps({"q": "x" * 10_000}).encode() + b'\n{"q": "end"}\n')
    name = unique("too large")
    before = await row_counts(pool)
    next_id = await pool.fetchval(
        "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END"
        " FROM test_sets_id_seq")

    exit_code, err = await import_file(small_requests_api, capsys, path, name,
                                       "--batch-size", batch_size)

    assert exit_code == 1
    assert err == "assay import: " + message.format(path=path,
                                                    test_set=f"ts_{next_id}")
    assert await ids_named(pool, name) == []
    assert await row_counts(pool) == before
