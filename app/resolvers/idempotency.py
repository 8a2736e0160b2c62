"""Turning a create's idempotencyKey argument into the key the store claims."""

from __future__ import annotations

import dataclasses
from typing import Any

from app import validation
from app.errors import BadUserInput
from app.settings import Settings
from app.store.idempotency import IdempotencyKey

MAX_KEY_LENGTH = 200


def key_of(operation: str, input: Any, workspace_id: int,
           settings: Settings) -> IdempotencyKey | None:
    """The request's key, with a digest of everything else it asked for."""
    if input.idempotency_key is None:
        return None
    key = validation.text(input.idempotency_key, "input.idempotencyKey",
                          max_length=MAX_KEY_LENGTH)
    if not key.strip():
        raise BadUserInput("input.idempotencyKey: must not be empty")
    request = dataclasses.asdict(input)
    del request["idempotency_key"]
    return IdempotencyKey.for_request(workspace_id, operation, key, request,
                                      settings.idempotency_key_hours)
