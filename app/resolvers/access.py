"""The role an operation needs: viewers read and follow, editors also change
test sets and run evaluations, admins also manage their workspace's keys."""

from __future__ import annotations

from app.auth import Caller
from app.context import Context
from app.errors import Forbidden


def require(context: Context, role: str) -> Caller:
    """The caller, if its role includes `role`; FORBIDDEN otherwise.

    Checked before anything in the request is looked up, so a refusal says
    nothing about whether the ids it names exist."""
    caller = context.authenticated
    if not caller.may(role):
        raise Forbidden(f"this needs a key with the {role} role; this key's role"
                        f" is {caller.role}")
    return caller
