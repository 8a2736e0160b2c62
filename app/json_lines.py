"""Test cases sent as JSON Lines text, the cheapest way to send many at once.

Each line holds one test case as a JSON object with the fields of the API's
`TestCaseInput` (`input`, and optionally `expectedOutput`, `category`,
`metadata`). Sent this way, a case costs the server one `json.loads` and the
checks every test case gets; sent as `TestCaseInput` objects, GraphQL's
coercion of every field of every object costs several times that.

Errors name the line, counting from 1 as editors do:
`jsonLines line 3.input: must be a JSON object of template variables`.
"""

from __future__ import annotations

import json
from typing import Any

from app import validation
from app.errors import BadUserInput

FIELDS = ("input", "expectedOutput", "category", "metadata")


def parse_test_cases(text: str, path: str, maximum: int) -> list[tuple[Any, ...]]:
    """The checked fields (input, expected output, category, metadata) of the
    test case on each non-blank line of `text`, in order."""
    test_cases = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if len(test_cases) == maximum:
            raise BadUserInput(
                f"{path}: more than {maximum} test cases in one request"
                " (send the rest in another)")
        test_cases.append(_test_case(line, f"{path} line {number}"))
    return test_cases


def _test_case(line: str, path: str) -> tuple[Any, ...]:
    try:
        fields = _DECODER.decode(line)
    except RecursionError:
        raise BadUserInput(f"{path}: nested too deeply to read") from None
    except ValueError as error:
        detail = (f"{error.msg} at column {error.colno}"
                  if isinstance(error, json.JSONDecodeError) else str(error))
        raise BadUserInput(f"{path}: not valid JSON ({detail})") from None
    if not isinstance(fields, dict):
        raise BadUserInput(f"{path}: must be a JSON object holding one test case")
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise BadUserInput(
            f"{path}: unknown field {unknown[0]!r} (a test case has "
            f"{', '.join(FIELDS[:-1])} and {FIELDS[-1]})")
    if "input" not in fields:
        raise BadUserInput(f"{path}.input: is required")
    for name in ("expectedOutput", "category"):
        if not isinstance(fields.get(name), (str, type(None))):
            raise BadUserInput(f"{path}.{name}: must be a string or null")
    return validation.test_case(fields["input"], fields.get("expectedOutput"),
                                fields.get("category"), fields.get("metadata"),
                                path)


def _refuse_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which are not JSON and which
    # PostgreSQL's jsonb refuses.
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every line: json.loads with an option builds a new one.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
