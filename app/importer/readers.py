"""Reading test-set files: records from JSONL, JSON, CSV and TSV, and test cases.

A file is read as a stream of `(line_number, record)` pairs, where a record is a
dict of field name to value, and then each record is mapped to a test case in
the shape of the API's `TestCaseInput` and checked with the functions the API
applies to each test case (app/validation.py). Nothing here talks to the
server, so the importer can check a whole file before it creates anything, and
a test case that passes here is one the API accepts.

Every problem is raised as an `ImportFileError` naming the file and the line
where the bad record starts, because a user fixing a file of thousands of
lines needs to be pointed at one of them.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from app import json_text, validation
from app.errors import BadUserInput

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "json", "csv", "tsv")

_FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}

# Tried in this order when the user names no expected-output field.
EXPECTED_FIELD_CANDIDATES = ("expected_output", "expected", "answer")
DEFAULT_CATEGORY_FIELD = "category"

# A JSON array is read this many bytes at a time. A single record may be
# larger than a chunk, but not larger than the cap: past it the file is more
# likely broken (an unclosed string) than holding one huge test case.
_JSON_CHUNK_BYTES = 64 * 1024
_MAX_JSON_RECORD_CHARS = 64 * 1024 * 1024

# The json scanner reports a truncated token (`tru`, `1e`, a half `\u` escape)
# at its start, so an error this close to the end of what has been read so far
# may only mean the record goes on in the next chunk.
_TRUNCATED_TOKEN_CHARS = 16
_JSON_WHITESPACE = re.compile(r"[ \t\r\n]*")

# Python's json parser recurses once per level of nesting and gives up at the
# interpreter's recursion limit, which is far past what the API accepts anyway.
_TOO_DEEP = (f"the record is nested deeper than {validation.MAX_JSON_DEPTH} "
             "levels, the most the API accepts")

# A quoted CSV cell, closed or running to the end of the text; what is left
# when these are taken out is the row's delimiters and unquoted text.
_QUOTED_CELL = re.compile(r'"[^"]*(?:"|$)')


class ImportFileError(Exception):
    """A test-set file cannot be imported; says which file and line, and why."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


@dataclasses.dataclass(frozen=True)
class FieldOptions:
    """The fields the user named; empty or None means "choose for me"."""

    input_fields: tuple[str, ...] = ()
    expected_field: str | None = None
    category_field: str | None = None


@dataclasses.dataclass(frozen=True)
class FieldMapping:
    """Which fields of a record make a test case's input, expected output and
    category; chosen once, from the file's first record.

    An empty `input_fields` means every field of a record except the expected
    and category fields. A field the user named is required in every record;
    one chosen by default may be missing from some.
    """

    input_fields: tuple[str, ...]
    expected_field: str | None
    category_field: str | None
    expected_required: bool = False
    category_required: bool = False


def guess_format(path: Path | str) -> str:
    """The file format that `path`'s extension stands for; an error if unknown."""
    suffix = Path(path).suffix.lower()
    file_format = _FORMAT_BY_SUFFIX.get(suffix)
    if file_format is None:
        known = ", ".join(sorted(_FORMAT_BY_SUFFIX))
        raise ImportFileError(
            path, None,
            f"cannot tell the format from the extension {suffix or '(none)'!r} "
            f"(known: {known}); give --format {'|'.join(FORMATS)}")
    return file_format


def read_records(
    path: Path | str,
    file_format: str,
    *,
    has_header: bool = True,
    delimiter: str | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, record)` for every record of the file, streaming.

    `line_number` is the 1-based physical line where the record starts. For
    CSV and TSV files without a header row (`has_header=False`) the fields are
    named `column1`, `column2`, ... A UTF-8 byte order mark is skipped. A CSV
    file is split at `delimiter`; None means the one `detect_delimiter` finds.
    """
    if file_format not in FORMATS:
        raise ImportFileError(path, None, f"unknown format {file_format!r}")
    if not has_header and file_format not in ("csv", "tsv"):
        raise ImportFileError(
            path, None, "a file without a header row must be CSV or TSV")
    if delimiter is not None and file_format != "csv":
        raise ImportFileError(
            path, None, "a delimiter can be chosen only for a CSV file")

    with open(path, "rb") as file:
        if file_format == "jsonl":
            yield from _read_jsonl(path, file)
        elif file_format == "json":
            yield from _read_json_array(path, file)
        else:
            lines = _decoded_lines(path, file)
            if file_format == "tsv":
                delimiter = "\t"
            elif delimiter is None:
                delimiter, lines = _delimiter_and_lines(lines, has_header)
            yield from _read_delimited(
                path, lines, file_format, delimiter, has_header)


def detect_delimiter(path: Path | str, *, has_header: bool = True) -> str:
    """The delimiter of a CSV file: ';' if its header row holds a ';' and no
    ',' outside quotes, else ','.

    Spreadsheets set to a language that writes decimal commas save CSV with
    semicolons. Only a header row is looked at: a row of data may hold a ';'
    in unquoted text, so a file without a header is taken to use ','.
    """
    with open(path, "rb") as file:
        delimiter, _ = _delimiter_and_lines(_decoded_lines(path, file), has_header)
    return delimiter


def choose_mapping(
    first_record: Mapping[str, Any], options: FieldOptions
) -> FieldMapping:
    """Settle which fields to use, filling what the user left open from the
    file's first record."""
    expected_field = options.expected_field
    if expected_field is None:
        expected_field = next(
            (name for name in EXPECTED_FIELD_CANDIDATES
             if name in first_record and name not in options.input_fields),
            None)

    category_field = options.category_field
    if (category_field is None and DEFAULT_CATEGORY_FIELD in first_record
            and DEFAULT_CATEGORY_FIELD not in options.input_fields):
        category_field = DEFAULT_CATEGORY_FIELD

    return FieldMapping(
        input_fields=options.input_fields,
        expected_field=expected_field,
        category_field=category_field,
        expected_required=options.expected_field is not None,
        category_required=options.category_field is not None,
    )


def to_test_case(
    path: Path | str, line: int, record: Mapping[str, Any], mapping: FieldMapping,
    *, check: bool = True,
) -> dict[str, Any]:
    """Map one record to a test case shaped like the API's `TestCaseInput`.

    The input is an object of the input fields with their values as read; the
    expected output is a string (other JSON values are serialised; null or an
    empty string means none); an empty category means none. The metadata keeps
    the source line so a case can be traced back to the file.
    """
    input_fields = mapping.input_fields or tuple(
        name for name in record
        if name not in (mapping.expected_field, mapping.category_field))
    for name in input_fields:
        _require_field(path, line, record, name, "input")
    if not input_fields:
        raise ImportFileError(
            path, line, "the record has no input fields "
            "(every field is the expected output or the category)")
    test_case: dict[str, Any] = {
        "input": {name: record[name] for name in input_fields}}

    expected = _optional_field(
        path, line, record, mapping.expected_field, mapping.expected_required,
        "expected-output")
    if expected is not None and expected != "":
        test_case["expectedOutput"] = _as_text(expected)

    category = _optional_field(
        path, line, record, mapping.category_field, mapping.category_required,
        "category")
    category_name = "" if category is None else _as_text(category).strip()
    if category_name:
        test_case["category"] = category_name

    test_case["metadata"] = {"source_line": line}
    if check:
        check_test_case(path, line, test_case)
    return test_case


def check_test_case(
    path: Path | str, line: int, test_case: Mapping[str, Any]
) -> None:
    """Apply to a test case the checks the API applies to every `TestCaseInput`,
    in the same order, so a case the API would refuse is refused here, with its
    line, before anything is sent."""
    try:
        validation.test_case(
            test_case["input"], test_case.get("expectedOutput"),
            test_case.get("category"), test_case["metadata"], "")
    except BadUserInput as error:
        # The path names the field; the line stands for the test case.
        raise ImportFileError(path, line, error.message.removeprefix(".")) from None


def read_test_cases(
    path: Path | str,
    file_format: str,
    options: FieldOptions,
    *,
    has_header: bool = True,
    delimiter: str | None = None,
    check: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield the test case of every record of the file, streaming.

    Reading the same unchanged file twice gives the same test cases, since the
    field mapping depends only on the first record. `check=False` leaves out
    the checks the API applies (for a file already checked).
    """
    mapping: FieldMapping | None = None
    records = read_records(path, file_format, has_header=has_header,
                           delimiter=delimiter)
    for line, record in records:
        if mapping is None:
            mapping = choose_mapping(record, options)
            logger.debug("reading %s with %s", path, mapping)
        yield to_test_case(path, line, record, mapping, check=check)


def _require_field(
    path: Path | str, line: int, record: Mapping[str, Any], name: str, role: str
) -> None:
    if name in record:
        return
    present = ", ".join(repr(field) for field in list(record)[:10])
    if len(record) > 10:
        present += ", ..."
    raise ImportFileError(
        path, line,
        f"the record has no {role} field {name!r} (its fields: {present or 'none'})")


def _optional_field(
    path: Path | str,
    line: int,
    record: Mapping[str, Any],
    name: str | None,
    required: bool,
    role: str,
) -> Any:
    if name is None:
        return None
    if required:
        _require_field(path, line, record, name, role)
    return record.get(name)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json_text.dumps(value)


# --- JSON Lines --------------------------------------------------------------


def _read_jsonl(
    path: Path | str, file: IO[bytes]
) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in _decoded_lines(path, file):
        if not text.strip():
            continue
        try:
            # Without its line break: a line cut short is then wrong at its
            # end, not at column 1 of a line after it.
            value = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as error:
            raise ImportFileError(
                path, line, f"invalid JSON: {error.msg} (column {error.colno})"
            ) from None
        except RecursionError:
            raise ImportFileError(path, line, _TOO_DEEP) from None
        if not isinstance(value, dict):
            raise ImportFileError(
                path, line, f"the record is a JSON {_json_kind(value)}, "
                "not an object")
        yield line, value


def _decoded_lines(path: Path | str, file: IO[bytes]) -> Iterator[tuple[int, str]]:
    """The file's lines, decoded from UTF-8 with their line endings kept.

    Lines are decoded one by one, rather than by opening the file as text, so
    that a bad byte can be reported with its line number.
    """
    for line, raw in enumerate(file, start=1):
        if line == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield line, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ImportFileError(
                path, line, f"invalid UTF-8: byte 0x{raw[error.start]:02x} "
                f"at byte {error.start + 1} of the line") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


# --- JSON arrays -------------------------------------------------------------


class _ChunkedText:
    """The text of a file, decoded a chunk at a time, with a read position and
    the line number at that position. Text before the position is dropped
    whenever more is read, so memory holds about one record."""

    def __init__(self, path: Path | str, file: IO[bytes]) -> None:
        self.path = path
        self.text = ""
        self.pos = 0
        self.line = 1
        self.at_eof = False
        self._file = file
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._num_raw_newlines = 0
        self._started = False

    def read_more(self) -> None:
        if self._started:
            raw = self._file.read(_JSON_CHUNK_BYTES)
        else:
            # The first read is long enough to hold a whole byte order mark.
            raw = self._file.read(max(_JSON_CHUNK_BYTES, len(codecs.BOM_UTF8)))
            raw = raw.removeprefix(codecs.BOM_UTF8)
            self._started = True

        num_pending_bytes = len(self._decoder.getstate()[0])
        try:
            chunk = self._decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as error:
            bad_at = max(0, error.start - num_pending_bytes)
            line = 1 + self._num_raw_newlines + raw.count(b"\n", 0, bad_at)
            raise ImportFileError(self.path, line, "invalid UTF-8") from None

        self._num_raw_newlines += raw.count(b"\n")
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        self.at_eof = not raw

    def advance_to(self, pos: int) -> None:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos

    def skip_whitespace(self) -> str:
        """Move past whitespace; the next character, or "" at the end."""
        while True:
            self.advance_to(_JSON_WHITESPACE.match(self.text, self.pos).end())
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.at_eof:
                return ""
            self.read_more()


def _read_json_array(
    path: Path | str, file: IO[bytes]
) -> Iterator[tuple[int, dict[str, Any]]]:
    text = _ChunkedText(path, file)
    decoder = json.JSONDecoder()
    if text.skip_whitespace() != "[":
        raise ImportFileError(
            path, text.line, "expected a JSON array of objects, starting with '['")
    text.advance_to(text.pos + 1)

    char = text.skip_whitespace()
    while char != "]":
        if char == "":
            raise ImportFileError(
                path, text.line, "the file ends before the array is closed")
        line = text.line
        yield line, _decode_record(text, decoder)

        char = text.skip_whitespace()
        if char == ",":
            text.advance_to(text.pos + 1)
            char = text.skip_whitespace()
            if char == "]":
                raise ImportFileError(
                    path, text.line, "a ']' follows a ',' (trailing comma)")
        elif char not in ("]", ""):
            raise ImportFileError(
                path, text.line, f"expected ',' or ']' after a record, "
                f"found {char!r}")

    text.advance_to(text.pos + 1)
    if text.skip_whitespace() != "":
        raise ImportFileError(path, text.line, "unexpected text after the array")


def _decode_record(text: _ChunkedText, decoder: json.JSONDecoder) -> dict[str, Any]:
    """Decode the object starting at the read position, reading more of the
    file until it is complete; errors name the line where it starts."""
    start_char = text.text[text.pos]
    if start_char != "{":
        kind = _JSON_KIND_BY_START.get(start_char)
        message = (f"the record is a JSON {kind}, not an object" if kind
                   else f"invalid JSON: unexpected {start_char!r}")
        raise ImportFileError(text.path, text.line, message)

    while True:
        try:
            record, end = decoder.raw_decode(text.text, text.pos)
        except json.JSONDecodeError as error:
            if text.at_eof or not _may_be_truncated(error, len(text.text)):
                line = text.line + text.text.count("\n", text.pos, error.pos)
                raise ImportFileError(
                    text.path, text.line, f"invalid JSON in the record starting "
                    f"here: {error.msg} (line {line})") from None
            if len(text.text) - text.pos > _MAX_JSON_RECORD_CHARS:
                raise ImportFileError(
                    text.path, text.line, "the record is larger than "
                    f"{_MAX_JSON_RECORD_CHARS} characters") from None
            text.read_more()
            continue
        except RecursionError:
            raise ImportFileError(text.path, text.line, _TOO_DEEP) from None
        text.advance_to(end)
        return record


_JSON_KIND_BY_START = {
    "[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null",
    "-": "number", **{digit: "number" for digit in "0123456789"},
}


def _may_be_truncated(error: json.JSONDecodeError, num_chars_read: int) -> bool:
    # A JSON string cannot hold a raw newline, so an unterminated one always
    # reaches the end of what was read: it may close in the next chunk.
    if error.msg.startswith("Unterminated string"):
        return True
    return error.pos >= num_chars_read - _TRUNCATED_TOKEN_CHARS


# --- CSV and TSV -------------------------------------------------------------


def _delimiter_and_lines(
    lines: Iterator[tuple[int, str]], has_header: bool
) -> tuple[str, Iterator[tuple[int, str]]]:
    """The CSV delimiter `detect_delimiter` describes, and all of `lines` again
    (the ones looked at, then the rest)."""
    if not has_header:
        return ",", lines
    looked_at: list[tuple[int, str]] = []
    for numbered_line in lines:
        looked_at.append(numbered_line)
        if numbered_line[1].rstrip("\r\n"):
            break
    # The csv reader skips empty lines, so the header is the first other one.
    header = _QUOTED_CELL.sub("", looked_at[-1][1]) if looked_at else ""
    delimiter = ";" if ";" in header and "," not in header else ","
    return delimiter, itertools.chain(looked_at, lines)


def _read_delimited(
    path: Path | str,
    numbered_lines: Iterator[tuple[int, str]],
    file_format: str,
    delimiter: str,
    has_header: bool,
) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = (text for _, text in numbered_lines)
    if file_format == "tsv":
        # Real TSV files hold bare quotes inside fields ("Todo por un dólar"),
        # and TSV has no quoting of its own: a tab or newline cannot be in a
        # field. Reading quotes as quoting would merge or split those fields.
        rows = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        # strict: an unclosed quote is an error at the row where it opens,
        # rather than a cell that silently swallows the rest of the file.
        rows = csv.reader(lines, delimiter=delimiter, strict=True)
    kind = file_format.upper()

    header: list[str] | None = None
    for line, row in _rows_with_start_lines(path, rows, kind):
        if header is None and has_header:
            header = _header_names(path, line, row)
            continue
        if header is None:
            header = [f"column{number}" for number in range(1, len(row) + 1)]

        if len(row) != len(header):
            against = "the header has" if has_header else "the first row has"
            raise ImportFileError(
                path, line, f"the row has {len(row)} cells but {against} "
                f"{len(header)} columns")
        yield line, dict(zip(header, row))


class _RowReader(Protocol):
    """What the csv module's reader offers: rows, and the lines read so far."""

    line_num: int

    def __next__(self) -> list[str]: ...


def _rows_with_start_lines(
    path: Path | str, rows: _RowReader, kind: str
) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank row with the physical line where it starts; a quoted cell
    may span lines, so the reader's count after the row is not its start."""
    while True:
        line = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise ImportFileError(path, line, f"malformed {kind}: {error}") from None
        if row:
            yield line, row


def _header_names(path: Path | str, line: int, row: list[str]) -> list[str]:
    # An unnamed column (as spreadsheet and dataframe exports write for an
    # index) gets the name it would have without a header.
    names = [name or f"column{number}" for number, name in enumerate(row, start=1)]
    seen: set[str] = set()
    for number, name in enumerate(names, start=1):
        # The API would refuse the name as a key of every test case's input,
        # and the first record's line would be blamed for the header's fault.
        if "\x00" in name:
            raise ImportFileError(
                path, line, f"the header's column {number} ({name!r}) contains "
                "a NUL character, which cannot be stored (a file saved as "
                "UTF-16 rather than UTF-8 has them everywhere)")
        if name in seen:
            raise ImportFileError(
                path, line, f"the header names the column {name!r} twice")
        seen.add(name)
    return names
