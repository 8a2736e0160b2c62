"""The `assay import` command: create a test set from a file through the API.

The import runs in two passes over the file. The first reads every record and
applies to each test case the checks the API applies, without contacting the
server, so a bad line stops the import before anything exists. The second
reads the file again and sends it in batches: `createTestSet` with the first
batch, `appendTestCaseLines` (the cases as JSON Lines text, far cheaper for the
server than the same cases as GraphQL input objects) with each further one,
reading and encoding the next batch while the server stores the last. If a
request fails part-way,
or the import is stopped by Ctrl-C or SIGTERM, the test set that was created
is deleted, so a test set is either imported whole or not at all.

Batches are cut by count (`--batch-size`) and by size (BATCH_MAX_BYTES of
JSON Lines, well under the server's default limit of 10 MiB a request even
once escaped in the request's JSON). A server with a lower
ASSAY_MAX_REQUEST_BYTES, or one test case larger than BATCH_MAX_BYTES, can
still meet the limit; the import then fails and is undone as above, and a
smaller `--batch-size` gets it through.

Known shortcoming: an import killed outright (SIGKILL, a crash, a machine
going down) cannot delete what it has sent. Its test set stays behind, visible
and usable but holding only the first batches of the file, until someone
deletes it by hand. Nothing on this side can prevent that; it stops mattering
once the server can keep a test set as a hidden draft until the importer marks
it complete, and drop drafts that are never completed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import Awaitable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2

from app import json_text, validation
from app.errors import BadUserInput
from app.importer.readers import (
    FORMATS,
    FieldOptions,
    ImportFileError,
    detect_delimiter,
    guess_format,
    read_test_cases,
)

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000/graphql"
DEFAULT_BATCH_SIZE = 5000
# A JSON Lines batch grows by at most twice once put in the request's JSON
# (each quote and backslash is escaped); twice this stays under 10 MiB.
BATCH_MAX_BYTES = 4 * 1024 * 1024

# Storing a batch of test cases takes the server one transaction; a large
# batch on a busy database can take well over httpx's default of five seconds.
_REQUEST_TIMEOUT_S = 120.0
_CONNECT_TIMEOUT_S = 10.0

# A shell reports a process that SIGTERM ended as 128 + 15; an import that
# stops on SIGTERM after cleaning up exits with the same status.
EXIT_TERMINATED = 128 + signal.SIGTERM

# How the API names a test case of a request: by its index in the request's
# list, then the field (`input.testCases[3].input.question: ...` in
# createTestSet), or by its line (`jsonLines line 4.input.question: ...` in
# appendTestCaseLines, counting from 1).
_TEST_CASE_PATH = re.compile(
    r"(?:(?:input\.)?testCases\[(\d+)\]|jsonLines line (\d+))(?:\.|: )(.*)",
    re.DOTALL)

# How the API refuses a batch of more test cases than it takes at once.
_CASES_CAP = re.compile(r"test cases in one request; at most (\d+)")

_TEST_SET_FIELDS = "id name testCaseCount categories { name }"

_CREATE_TEST_SET = """
mutation CreateTestSet($input: CreateTestSetInput!) {
  createTestSet(input: $input) { %s }
}
""" % _TEST_SET_FIELDS

_APPEND_TEST_CASE_LINES = """
mutation AppendTestCaseLines($testSetId: ID!, $jsonLines: String!) {
  appendTestCaseLines(testSetId: $testSetId, jsonLines: $jsonLines) { %s }
}
""" % _TEST_SET_FIELDS

_DELETE_TEST_SET = """
mutation DeleteTestSet($id: ID!) {
  deleteTestSet(id: $id)
}
"""


class ApiError(Exception):
    """A request to the Assay API failed: unreachable, or answered an error."""


class _Refused(ApiError):
    """The API answered a mutation with an error: its message and code, and
    whether it refused the request for its size alone (HTTP 413)."""

    def __init__(self, field: str, message: str, code: str | None,
                 too_large: bool = False) -> None:
        self.message = message
        self.code = code
        self.too_large = too_large
        described = f"{message} [{code}]" if code else message
        super().__init__(f"{field} failed: {described}")


class _ImportAborted(Exception):
    """The import stopped part-way; the message says why and what was undone."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `assay import` to its subparser."""
    parser.add_argument(
        "file", type=Path, metavar="FILE",
        help="the test cases: JSON Lines, a JSON array of objects, CSV or TSV")
    parser.add_argument(
        "--name", required=True, help="the name of the new test set")
    parser.add_argument(
        "--description", metavar="TEXT", help="a description of the test set")
    parser.add_argument(
        "--url", default=DEFAULT_URL,
        help=f"the Assay GraphQL API, or the server's base URL "
        f"(default: {DEFAULT_URL})")
    parser.add_argument(
        "--format", choices=FORMATS, dest="file_format",
        help="the file format (default: guessed from the extension: .jsonl, "
        ".ndjson, .json, .csv, .tsv, .tab)")
    parser.add_argument(
        "--no-header", action="store_true",
        help="the CSV or TSV file has no header row; its columns are named "
        "column1, column2, ...")
    parser.add_argument(
        "--delimiter", type=_delimiter, metavar="CHAR",
        help="the character between the cells of a CSV file, \\t for a tab "
        "(default: ';' if the header row has a ';' and no ',' outside quotes, "
        "else ',')")
    parser.add_argument(
        "--input-field", action="append", dest="input_fields", metavar="NAME",
        help="a field that goes into each test case's input; repeat for more "
        "(default: every field except the expected-output and category ones)")
    parser.add_argument(
        "--expected-field", metavar="NAME",
        help="the field holding the expected output (default: the first of "
        "expected_output, expected, answer that the first record has)")
    parser.add_argument(
        "--category-field", metavar="NAME",
        help="the field holding the category (default: category, if the first "
        "record has it)")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"test cases sent per request (default: {DEFAULT_BATCH_SIZE})")


async def run(args: argparse.Namespace, api_key: str | None = None) -> int:
    """Import the file named by `args`; return the process exit code.

    `api_key` (ASSAY_API_KEY) is sent as a bearer key with every request.
    Errors are printed to stderr as `assay import: ...`; the one line of
    success goes to stdout.
    """
    try:
        url = api_url(args.url)
        _check_test_set_fields(args.name, args.description)
        source = _Source.from_args(args)
        if source.delimiter not in (None, ",") and args.delimiter is None:
            _note(f"reading {source.path} with {source.delimiter!r} "
                  "as the delimiter")
        num_test_cases = source.check()
    except (ValueError, BadUserInput, ImportFileError) as error:
        return _fail(str(error))

    logger.info("importing %d test cases from %s to %s",
                num_test_cases, source.path, url)
    started_s = time.monotonic()
    async with _new_client(api_key) as client:
        api = _AssayApi(client, url)
        try:
            test_set = await _unless_terminated(_send(
                api, source, args.name, args.description, args.batch_size))
        except (ApiError, _ImportAborted) as error:
            refused = error if isinstance(error, _Refused) else error.__cause__
            if isinstance(refused, _Refused) and refused.code == "UNAUTHENTICATED":
                return _fail(f"{error}; set ASSAY_API_KEY to a key with the"
                             " editor role (`assay keys create`)")
            cap = (_CASES_CAP.search(refused.message)
                   if isinstance(refused, _Refused) else None)
            if cap is not None:
                return _fail(f"{error}; the server takes at most {cap[1]} test"
                             f" cases a request: use --batch-size {cap[1]} or less")
            return _fail(str(error))

    if test_set is None:
        return EXIT_TERMINATED
    logger.info("imported test set %s in %.1f s",
                test_set["id"], time.monotonic() - started_s)
    print(_success_line(test_set))
    return 0


def api_url(url: str) -> str:
    """The GraphQL endpoint for `url`, which may be the server's base URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be an http:// or https:// URL, not {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/graphql"):
        path += "/graphql"
    return parts._replace(path=path).geturl()


def _check_test_set_fields(name: str, description: str | None) -> None:
    """Refuse a name or description the API would refuse, before the file is
    read; one the request could not even encode would end in a traceback."""
    validation.text(name, "--name", required=True,
                    max_length=validation.MAX_NAME_LENGTH)
    validation.text(description, "--description")


class _Source:
    """The file to import and how to read it; each read streams it anew."""

    def __init__(self, path: Path, file_format: str, options: FieldOptions,
                 has_header: bool, delimiter: str | None) -> None:
        self.path = path
        self.file_format = file_format
        self.options = options
        self.has_header = has_header
        self.delimiter = delimiter

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Source:
        path = Path(args.file)
        if not path.exists():
            raise ImportFileError(path, None, "no such file")
        if not path.is_file():
            raise ImportFileError(path, None, "not a file")
        options = FieldOptions(
            input_fields=tuple(args.input_fields or ()),
            expected_field=args.expected_field,
            category_field=args.category_field,
        )
        file_format = args.file_format or guess_format(path)
        has_header = not args.no_header

        # Settled once, so that both passes split the file the same way.
        delimiter = args.delimiter
        if delimiter is None and file_format == "csv":
            try:
                delimiter = detect_delimiter(path, has_header=has_header)
            except OSError as error:
                raise _unreadable(path, error) from None
        return cls(path, file_format, options, has_header, delimiter)

    def test_cases(self, *, check: bool = True) -> Iterator[dict[str, Any]]:
        try:
            yield from read_test_cases(
                self.path, self.file_format, self.options,
                has_header=self.has_header, delimiter=self.delimiter,
                check=check)
        except OSError as error:
            raise _unreadable(self.path, error) from None

    def check(self) -> int:
        """Read every record once; the number of test cases, or the first
        problem as an `ImportFileError`."""
        num_test_cases = sum(1 for _ in self.test_cases())
        if num_test_cases == 0:
            raise ImportFileError(self.path, None, "the file has no test cases")
        return num_test_cases


class _AssayApi:
    """The three mutations the importer needs, over GraphQL-over-HTTP."""

    def __init__(self, client: httpx2.AsyncClient, url: str) -> None:
        self._client = client
        self.url = url

    async def create_test_set(self, name: str, description: str | None,
                              test_cases: list[dict[str, Any]]) -> dict[str, Any]:
        test_set_input: dict[str, Any] = {"name": name, "testCases": test_cases}
        if description is not None:
            test_set_input["description"] = description
        return await self._mutate(
            "createTestSet", _CREATE_TEST_SET, {"input": test_set_input})

    async def append_test_case_lines(self, test_set_id: str,
                                     json_lines: str) -> dict[str, Any]:
        return await self._mutate(
            "appendTestCaseLines", _APPEND_TEST_CASE_LINES,
            {"testSetId": test_set_id, "jsonLines": json_lines})

    async def delete_test_set(self, test_set_id: str) -> None:
        await self._mutate("deleteTestSet", _DELETE_TEST_SET, {"id": test_set_id})

    async def _mutate(self, field: str, query: str,
                      variables: dict[str, Any]) -> Any:
        try:
            response = await self._client.post(
                self.url, json={"query": query, "variables": variables})
        except httpx2.TimeoutException:
            raise ApiError(
                f"the Assay API at {self.url} did not answer {field} within "
                f"{_REQUEST_TIMEOUT_S:.0f} s") from None
        except httpx2.TransportError as error:
            raise ApiError(f"cannot reach the Assay API at {self.url}: "
                           f"{error or type(error).__name__}") from None

        body = _json_or_none(response)
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            raise _Refused(field, *_message_and_code(errors[0]),
                           too_large=response.status_code == 413)
        data = body.get("data") if isinstance(body, dict) else None
        if (response.status_code != 200 or not isinstance(data, dict)
                or data.get(field) is None):
            raise ApiError(
                f"{field} failed: {self.url} answered HTTP {response.status_code} "
                "without a result; is it an Assay API?")
        return data[field]


async def _unless_terminated(
    sending: Coroutine[Any, Any, dict[str, Any]],
) -> dict[str, Any] | None:
    """Await `sending` in a task of its own that SIGTERM cancels, as Ctrl-C
    cancels the command's task, so that it cleans up the same way; None if
    SIGTERM stopped it."""
    task = asyncio.ensure_future(sending)
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        # A second SIGTERM must not cut the clean-up short; SIGKILL stops the
        # process at once for whoever cannot wait.
        if not terminated:
            terminated = True
            task.cancel()

    loop = asyncio.get_running_loop()
    previous_handler = signal.getsignal(signal.SIGTERM)
    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError, ValueError):
        # No signal handling here (Windows, or a thread other than the main
        # one): SIGTERM keeps its default of ending the process at once.
        return await task

    try:
        return await task
    except asyncio.CancelledError:
        this_task = asyncio.current_task()
        if not terminated or (this_task is not None and this_task.cancelling()):
            raise
        return None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


async def _send(api: _AssayApi, source: _Source, name: str,
                description: str | None, batch_size: int) -> dict[str, Any]:
    """Create the test set from the file's first batch and append the rest;
    on any failure or interruption, delete what was created."""
    test_set: dict[str, Any] | None = None
    creating: asyncio.Future[dict[str, Any]] | None = None
    # The batch the server is storing while the next one is read, with the
    # source line of each of its test cases.
    appending: tuple[asyncio.Future[dict[str, Any]], list[int]] | None = None
    # Read in a thread, so that the next batch is read and encoded while the
    # server stores the last one.
    # Checked again: the file may have changed since the first pass, and a
    # case that cannot even be encoded must be named by its line.
    batches = _batches(source.test_cases(), batch_size, BATCH_MAX_BYTES)
    try:
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            test_cases, json_lines = batch
            lines = [case["metadata"]["source_line"] for case in test_cases]
            if test_set is None:
                # Shielded: if the import is interrupted while the server
                # stores the test set, the request still gets its answer,
                # which says what to delete.
                creating = asyncio.ensure_future(
                    api.create_test_set(name, description, test_cases))
                test_set = await _answer(asyncio.shield(creating), lines, source)
                _log_stored(test_set)
                continue
            if appending is not None:
                test_set = await _answer(*appending, source)
                _log_stored(test_set)
            appending = (asyncio.ensure_future(
                api.append_test_case_lines(test_set["id"], json_lines)), lines)
        if appending is not None:
            test_set = await _answer(*appending, source)
            _log_stored(test_set)
            appending = None
    except (ApiError, ImportFileError) as error:
        await _abandon(appending)
        undone = await _discard(api, test_set)
        raise _ImportAborted(f"{error}{undone}") from error
    except BaseException:
        # Interrupted (Ctrl-C or SIGTERM cancels the running task) or a bug:
        # still leave no half-imported test set behind, then let the exception
        # go on.
        await _abandon(appending)
        if test_set is None and creating is not None:
            test_set = await _created(creating)
        logger.warning("import interrupted%s", await _discard(api, test_set))
        raise

    if test_set is None:
        # The file was checked to have test cases; it changed since.
        raise _ImportAborted(f"{source.path}: the file has no test cases")
    return test_set


async def _answer(request: Awaitable[dict[str, Any]], lines: list[int],
                  source: _Source) -> dict[str, Any]:
    """The API's answer to a batch; a refusal names the file's line."""
    try:
        return await request
    except _Refused as error:
        raise _at_source_line(error, source.path, lines) from None


async def _abandon(
    appending: tuple[asyncio.Future[dict[str, Any]], list[int]] | None,
) -> None:
    """Stop waiting for a batch still being sent. Deleting the test set after
    it is safe either way: the server stores a batch and deletes a test set
    one after the other, and the deletion takes everything."""
    if appending is None:
        return
    request = appending[0]
    request.cancel()
    try:
        await request
    except (asyncio.CancelledError, ApiError):
        pass
    except Exception:
        # Whatever it was, the test set must still be deleted.
        logger.debug("an abandoned batch failed", exc_info=True)


def _log_stored(test_set: dict[str, Any]) -> None:
    logger.info("test set %s has %d test cases",
                test_set["id"], test_set["testCaseCount"])


def _at_source_line(error: _Refused, path: Path, lines: list[int]) -> Exception:
    """The API names a refused test case by its index in the batch, which means
    nothing to the user; name the line of the file it came from instead.
    `lines` holds the source line of each test case of the batch.

    A batch refused for its size names no test case; name the lines it held,
    so that the user can find a test case too large to send at all.
    """
    if error.too_large:
        if len(lines) == 1:
            return ImportFileError(
                path, lines[0], "this test case alone makes a request larger "
                f"than the API accepts ({error.message})")
        return ImportFileError(
            path, lines[0], f"the test cases on lines {lines[0]}-{lines[-1]} "
            f"make a request larger than the API accepts ({error.message}); "
            "a smaller --batch-size sends fewer at a time")
    match = _TEST_CASE_PATH.fullmatch(error.message)
    if match is None:
        return error
    index = int(match[1]) if match[1] is not None else int(match[2]) - 1
    if not 0 <= index < len(lines):
        return error
    return ImportFileError(path, lines[index],
                           f"{match[3]} (the server refused this test case)")


async def _created(
    creating: asyncio.Future[dict[str, Any]],
) -> dict[str, Any] | None:
    """The test set an interrupted `createTestSet` stored, once the server has
    answered; None if it stored none."""
    try:
        return await creating
    except ApiError:
        return None


async def _discard(api: _AssayApi, test_set: dict[str, Any] | None) -> str:
    """Delete a partly imported test set; a clause saying what happened."""
    if test_set is None:
        return ""
    test_set_id = test_set["id"]
    try:
        await api.delete_test_set(test_set_id)
    except ApiError as error:
        return (f"; the partly imported test set {test_set_id} could not be "
                f"deleted ({error}): delete it by hand")
    logger.info("deleted the partly imported test set %s", test_set_id)
    return f"; the partly imported test set {test_set_id} was deleted"


def _batches(test_cases: Iterable[dict[str, Any]], batch_size: int,
             max_bytes: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """The test cases in batches of at most `batch_size`, and of at most
    `max_bytes` as JSON Lines unless one case alone is larger; each with its
    JSON Lines text."""
    batch: list[dict[str, Any]] = []
    lines: list[str] = []
    size = 0
    for test_case in test_cases:
        line = json_text.dumps(test_case)
        line_size = len(line.encode()) + 1
        if batch and (len(batch) == batch_size or size + line_size > max_bytes):
            yield batch, "\n".join(lines)
            batch, lines, size = [], [], 0
        batch.append(test_case)
        lines.append(line)
        size += line_size
    if batch:
        yield batch, "\n".join(lines)


def _new_client(api_key: str | None) -> httpx2.AsyncClient:
    timeout = httpx2.Timeout(_REQUEST_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx2.AsyncClient(timeout=timeout, headers=headers)


def _json_or_none(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message_and_code(error: Any) -> tuple[str, str | None]:
    if not isinstance(error, dict):
        return str(error), None
    message = str(error.get("message") or "no message")
    extensions = error.get("extensions")
    code = extensions.get("code") if isinstance(extensions, dict) else None
    return message, str(code) if code else None


def _success_line(test_set: dict[str, Any]) -> str:
    num_test_cases = test_set["testCaseCount"]
    num_categories = len(test_set["categories"])
    return (f'Created test set "{test_set["name"]}" (id {test_set["id"]}) with '
            f'{_count(num_test_cases, "test case", "test cases")} in '
            f'{_count(num_categories, "category", "categories")}.')


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _delimiter(text: str) -> str:
    delimiter = "\t" if text == "\\t" else text
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise argparse.ArgumentTypeError(
            f"must be one character other than a quote or a line break, "
            f"not {text!r}")
    return delimiter


def _unreadable(path: Path, error: OSError) -> ImportFileError:
    return ImportFileError(path, None, f"cannot read: {error.strerror or error}")


def _note(message: str) -> None:
    print(f"assay import: {message}", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"assay import: {message}", file=sys.stderr)
    return 1
