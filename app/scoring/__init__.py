"""Scorers: how an evaluation decides whether a model's output passed.

An evaluation names one scorer type (the GraphQL enum `ScorerType`) and its
options. `build_scorer` checks the options once, when the evaluation is
created or its job starts, and returns a scorer that then scores every result:

    scorer = build_scorer("NUMERIC", {"tolerance": 0.01})
    scorer.score("The answer is 72.", "#### 72")   # Score(value=1.0, passed=True)

One module per family: `text` (EXACT_MATCH, CONTAINS), `pattern` (REGEX),
`numeric` (NUMERIC).
"""

from __future__ import annotations

from app.scoring.base import (
    Score,
    Scorer,
    ScorerOptionsError,
    ScoringError,
    check_option_names,
)
from app.scoring.numeric import NumericScorer, final_number
from app.scoring.pattern import RegexScorer
from app.scoring.text import ContainsScorer, ExactMatchScorer

__all__ = [
    "SCORER_TYPES",
    "Score",
    "Scorer",
    "ScorerOptionsError",
    "ScoringError",
    "build_scorer",
    "final_number",
]

_SCORERS = {
    "EXACT_MATCH": ExactMatchScorer,
    "CONTAINS": ContainsScorer,
    "REGEX": RegexScorer,
    "NUMERIC": NumericScorer,
}

SCORER_TYPES = frozenset(_SCORERS)


def build_scorer(scorer_type: str, options: dict | None) -> Scorer:
    """Validate `options` for `scorer_type` and return a ready scorer.

    Everything that can be done once is done here (a REGEX pattern is
    compiled here, not per output). Raises ScorerOptionsError naming the
    option at fault, or `type` for an unknown scorer type.
    """
    scorer_class = _SCORERS.get(scorer_type)
    if scorer_class is None:
        raise ScorerOptionsError(
            "type", f"must be one of {', '.join(_SCORERS)}, got {scorer_type!r}"
        )

    checked = check_option_names(scorer_type, options, scorer_class.option_names)
    return scorer_class.from_options(checked)
