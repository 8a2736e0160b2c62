"""What every scorer shares: the score, the errors, and reading options.

Scorer options arrive as JSON from the API, so the readers here check JSON
types (a boolean is `true`, not `"yes"` or `1`) and name the failing option by
its path, e.g. `options.pattern`, so the API can point at it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Score:
    """How well one output did: `value` in [0, 1] and whether it passed."""

    value: float
    passed: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a score must be between 0 and 1, got {self.value!r}")


PASS = Score(1.0, True)
FAIL = Score(0.0, False)


class ScorerOptionsError(ValueError):
    """The scorer's options are unusable.

    `path` names the option (e.g. `"options.pattern"`, or `"options"` when the
    options as a whole are wrong); `str()` says what is wrong with it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class ScoringError(ValueError):
    """A test case cannot be scored, e.g. NUMERIC with no number in its
    expected output. It is the test case's fault, not the model's, so the
    caller records it on that one result instead of failing the output.
    """


class Scorer(Protocol):
    """Scores one model output against a test case's expected output."""

    needs_expected_output: bool

    def score(self, output: str, expected_output: str | None) -> Score:
        """Score `output`; raises ScoringError if the test case is unusable."""
        ...


def require_expected(scorer_type: str, expected_output: str | None) -> str:
    """The expected output, or a ScoringError if the test case has none."""
    if expected_output is None:
        raise ScoringError(
            f"the test case has no expected output, which {scorer_type} needs"
        )
    return expected_output


def check_option_names(
    scorer_type: str, options: object, known: tuple[str, ...]
) -> Mapping[str, object]:
    """The options as a mapping, refusing anything but the `known` names."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ScorerOptionsError(
            "options", f"must be a JSON object, got {describe(options)}"
        )

    for name in options:
        if name not in known:
            takes = f"takes {', '.join(known)}" if known else "takes no options"
            raise ScorerOptionsError(
                f"options.{name}", f"is not an option of {scorer_type} ({takes})"
            )
    return options


def bool_option(options: Mapping[str, object], name: str) -> bool:
    """An optional boolean option; absent or null means false."""
    value = options.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ScorerOptionsError(
            f"options.{name}", f"must be true or false, got {describe(value)}"
        )
    return value


def non_negative_option(options: Mapping[str, object], name: str) -> float:
    """An optional non-negative, finite number; absent or null means 0."""
    value = options.get(name)
    if value is None:
        return 0.0

    # bool is an int in Python, but `true` is not a number in JSON.
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e300 else math.inf

    if not math.isfinite(number) or number < 0:
        raise ScorerOptionsError(
            f"options.{name}",
            f"must be a non-negative number, got {describe(value)}",
        )
    return number


def string_option(options: Mapping[str, object], name: str) -> str:
    """A required, non-empty string option."""
    value = options.get(name)
    if value is None:
        raise ScorerOptionsError(f"options.{name}", "is required")
    if not isinstance(value, str):
        raise ScorerOptionsError(
            f"options.{name}", f"must be a string, got {describe(value)}"
        )
    if not value:
        raise ScorerOptionsError(f"options.{name}", "must not be empty")
    return value


def describe(value: object) -> str:
    """A short JSON rendering of a bad value, for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
