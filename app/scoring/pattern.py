"""The REGEX scorer, and the limits that keep a user's pattern from hanging
the worker.

Python's `re` backtracks and has no time limit, and a worker stuck in one
search stops scoring every evaluation it holds. Two defences:

- Patterns that repeat something which itself repeats, as in `(a+)+`, are
  refused when the scorer is built: they take exponential time to fail.
- Only the first MAX_SEARCHED_CHARS characters of an output are searched,
  which bounds the polynomial cases.

Known shortcoming: the second bound is loose. Two adjacent wildcards that
fail to match (`.*.*=` on 10,000 characters without `=`) still take minutes,
and an alternation of overlapping branches (`(a|a)*b`) is exponential without
any nested repeat. That stops mattering once the worker runs REGEX searches
in a child process it can stop after a time limit.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# Python has no public API for a pattern's parse tree. The old public names,
# `sre_parse` and `sre_constants`, warn on import since 3.11; these are the
# same modules under their current names.
from re import _constants as sre
from re import _parser as sre_parser
from typing import Any

from app.scoring.base import (
    FAIL,
    PASS,
    Score,
    ScorerOptionsError,
    bool_option,
    string_option,
)

MAX_PATTERN_CHARS = 1_000
MAX_SEARCHED_CHARS = 10_000

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


@dataclass(frozen=True)
class RegexScorer:
    """REGEX: passes when `pattern` is found anywhere in the output
    (`re.search`), case-insensitively with `ignoreCase`.

    Only the first MAX_SEARCHED_CHARS (10,000) characters of the output are
    searched, to bound the time a slow pattern can take; so in a longer output
    `$` can match at that cut. Patterns longer than 1,000 characters, and
    patterns with a repeat inside a repeat, are refused. Flags such as
    multi-line go inline in the pattern, e.g. `(?m)^Answer:`.
    """

    regex: re.Pattern[str]

    needs_expected_output = False
    option_names = ("pattern", "ignoreCase")

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> RegexScorer:
        pattern = string_option(options, "pattern")
        flags = re.IGNORECASE if bool_option(options, "ignoreCase") else 0
        return cls(regex=compile_pattern(pattern, flags))

    def score(self, output: str, expected_output: str | None) -> Score:
        # The cap bounds the time a slow pattern can take (module docstring);
        # endpos rather than a slice, so a long output is not copied.
        found = self.regex.search(output, 0, MAX_SEARCHED_CHARS)
        return PASS if found else FAIL


def compile_pattern(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """Compile a user's pattern, or raise ScorerOptionsError saying why not."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ScorerOptionsError(
            "options.pattern",
            f"is {len(pattern):,} characters long; the limit is "
            f"{MAX_PATTERN_CHARS:,}",
        )

    try:
        with warnings.catch_warnings():
            # `re` warns (FutureWarning) about `[[` or `--` in a set, whose
            # meaning may change in a later Python; the pattern works today.
            warnings.simplefilter("ignore", FutureWarning)
            regex = re.compile(pattern, flags)
            nested = _has_nested_repeat(sre_parser.parse(pattern, flags), False)
    except re.error as error:
        where = f" at position {error.pos}" if error.pos is not None else ""
        raise ScorerOptionsError(
            "options.pattern",
            f"is not a valid regular expression: {error.msg}{where}",
        ) from None
    except RecursionError:
        raise ScorerOptionsError(
            "options.pattern", "is nested too deeply to compile"
        ) from None
    except OverflowError:
        raise ScorerOptionsError(
            "options.pattern",
            "holds a number too large to compile (a repeat count, say)",
        ) from None

    if nested:
        raise ScorerOptionsError(
            "options.pattern",
            "repeats something that itself repeats (as in (a+)+), which can "
            "take exponential time on outputs that do not match; write it "
            "without the nested repeat",
        )
    return regex


def _has_nested_repeat(items: sre_parser.SubPattern, in_repeat: bool) -> bool:
    """Whether a part that matches a varying number of times sits inside a
    part that repeats: the shape that makes backtracking exponential.
    """
    for op, arg in items:
        if op in _REPEATS:
            low, high, body = arg
            # A possessive repeat never gives characters back, so it offers
            # the outer repeat no second way to split the text.
            varies = low != high and op is not sre.POSSESSIVE_REPEAT
            if in_repeat and varies:
                return True
            if _has_nested_repeat(body, in_repeat or high > 1):
                return True
            continue

        for child in _children(op, arg):
            if _has_nested_repeat(child, in_repeat):
                return True
    return False


def _children(op: object, arg: Any) -> Iterator[sre_parser.SubPattern]:
    """The sub-patterns inside one parsed item (groups, branches, asserts)."""
    if op is sre.SUBPATTERN:
        yield arg[3]
    elif op is sre.BRANCH:
        yield from arg[1]
    elif op is sre.ATOMIC_GROUP:
        yield arg
    elif op in (sre.ASSERT, sre.ASSERT_NOT):
        yield arg[1]
    elif op is sre.GROUPREF_EXISTS:
        yield from (part for part in arg[1:] if part is not None)
