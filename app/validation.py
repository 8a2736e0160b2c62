"""Checks on test data and other user input that types alone cannot express.

Used by the API's resolvers and by `assay import`'s first pass, so that a file
the API would refuse is refused before anything is sent.

Each failure is a BadUserInput whose message starts with the path of the
offending field (`input.testCases[3].input.question: ...`), so a client can
point at it.
"""

from __future__ import annotations

import math
from typing import Any

from app.errors import BadUserInput

MAX_NAME_LENGTH = 200
MAX_TEXT_LENGTH = 100_000
MAX_JSON_DEPTH = 32


def text(value: str | None, path: str, *, required: bool = False,
         max_length: int = MAX_TEXT_LENGTH) -> str | None:
    """A string with no NUL or lone surrogate, within its length; names are
    trimmed, and an empty required one is refused."""
    if value is None:
        if required:
            raise BadUserInput(f"{path}: is required")
        return None
    _storable(value, path)
    if required:
        value = value.strip()
        if not value:
            raise BadUserInput(f"{path}: must not be empty")
    if len(value) > max_length:
        raise BadUserInput(
            f"{path}: is {len(value)} characters long; at most {max_length} allowed")
    return value


def json_value(value: Any, path: str, *, depth: int = 0) -> Any:
    """A JSON value PostgreSQL can store (no NUL, no lone surrogate) and
    nested no deeper than MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise BadUserInput(f"{path}: is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _storable(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, f"{path} (a key)")
            json_value(item, f"{path}.{key}", depth=depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            json_value(item, f"{path}[{index}]", depth=depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadUserInput(
            f"{path}: {value} is not a JSON number (too large, infinite or NaN)")
    return value


def _storable(value: str, path: str) -> None:
    if "\x00" in value:
        raise BadUserInput(f"{path}: contains a NUL character, which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadUserInput(
            f"{path}: contains a lone surrogate, which is not valid Unicode"
        ) from None
