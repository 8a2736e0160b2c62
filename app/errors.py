"""The errors the API expects, each with the code clients see.

Resolvers raise these; the error hook in app/server.py turns everything else
into INTERNAL_SERVER_ERROR with a generic message, so that no stack trace,
SQL or secret ever reaches a client.
"""

from __future__ import annotations


class ApiError(Exception):
    """An expected failure; `code` becomes `extensions.code` in the response."""

    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadUserInput(ApiError):
    code = "BAD_USER_INPUT"


class NotFound(ApiError):
    code = "NOT_FOUND"


class Conflict(ApiError):
    code = "CONFLICT"


class Forbidden(ApiError):
    code = "FORBIDDEN"


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"
