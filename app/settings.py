"""Assay's settings, read once from the environment at start-up.

Every process (API, worker, simulator, CLI) builds one `Settings` with
`Settings.from_env()` and passes it down; nothing reads the environment later.
A missing or malformed value fails at once with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

Number = TypeVar("Number", int, float)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/assay"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
OPENAI_URL = "https://api.openai.com/v1"
LOCAL_SIMULATOR_URL = "http://127.0.0.1:8001/v1"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # URLs may hold passwords, so repr leaves them out; see safe_database_url.
    database_url: str = dataclasses.field(default=DEFAULT_DATABASE_URL, repr=False)
    redis_url: str = dataclasses.field(default=DEFAULT_REDIS_URL, repr=False)
    # Every Redis key and channel Assay uses starts with this, so that several
    # deployments (or test runs) can share one Redis without seeing each other.
    redis_prefix: str = "assay"
    openai_base_url: str | None = None
    openai_api_key: str | None = dataclasses.field(default=None, repr=False)
    model_timeout_s: float = 60.0
    model_max_retries: int = 3
    # A run the model keeps rate limiting with no answer at all for this long
    # fails, instead of waiting on an endpoint that may never let it through.
    rate_limit_max_wait_s: float = 600.0
    default_concurrency: int = 8
    max_concurrency: int = 64
    db_pool_max_size: int = 10
    # How often each worker looks for unfinished evaluations nobody runs.
    recovery_interval_s: float = 15.0
    # How long a worker told to stop lets its runs finish the calls in flight.
    drain_s: float = 30.0
    # Bounds on one API request, so that no single request can stall the API.
    max_request_bytes: int = 10 * 1024 * 1024
    max_query_depth: int = 12
    max_query_aliases: int = 30
    max_query_tokens: int = 5_000
    max_query_chars: int = 100_000
    max_page_size: int = 500
    max_cases_per_request: int = 10_000
    # Pings on idle websockets, more often than proxies drop silent ones.
    ws_keepalive_s: float = 5.0
    # How long createTestSet/createEvaluation remember an idempotency key.
    idempotency_key_hours: float = 24.0
    # Every request must present an API key unless this is turned off
    # (ASSAY_AUTH=off), which the API logs loudly at start-up.
    auth_enabled: bool = True
    # Browser origins (scheme://host[:port]) whose pages may call the API and
    # open its websockets; none by default.
    cors_origins: tuple[str, ...] = ()
    introspection: bool = True
    graphiql: bool = True
    # How often the API re-checks the keys of open websockets, so that a key
    # revoked elsewhere (`assay keys revoke`) or expiring ends its streams.
    key_check_s: float = 5.0
    # Requests a minute and calls in flight every worker together keeps to on
    # one model endpoint (see app/jobs/endpoint_limit.py); None: no limit.
    model_rpm: int | None = None
    model_max_calls: int | None = None
    # An evaluation is run in parts of this many consecutive test cases, and
    # by up to this many workers at once (its lead and helpers, each with the
    # evaluation's concurrency).
    part_cases: int = 200
    workers_per_evaluation: int = 4
    # The key CLI commands that call the API present (`assay import`).
    api_key: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.default_concurrency > self.max_concurrency:
            raise SettingsError(
                f"ASSAY_DEFAULT_CONCURRENCY ({self.default_concurrency}) must not"
                f" exceed ASSAY_MAX_CONCURRENCY ({self.max_concurrency})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=_url(env, "DATABASE_URL", DEFAULT_DATABASE_URL,
                              ("postgresql", "postgres")),
            redis_url=_url(env, "REDIS_URL", DEFAULT_REDIS_URL,
                           ("redis", "rediss", "unix")),
            redis_prefix=_prefix(env, "ASSAY_REDIS_PREFIX", "assay"),
            openai_base_url=_optional_url(env, "OPENAI_BASE_URL"),
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            model_timeout_s=_number(env, "ASSAY_MODEL_TIMEOUT_S", 60.0, float,
                                    minimum=0.1),
            model_max_retries=_number(env, "ASSAY_MODEL_MAX_RETRIES", 3, int,
                                      minimum=0),
            rate_limit_max_wait_s=_number(env, "ASSAY_RATE_LIMIT_MAX_WAIT_S", 600.0,
                                          float, minimum=1.0),
            default_concurrency=_number(env, "ASSAY_DEFAULT_CONCURRENCY", 8, int,
                                        minimum=1),
            max_concurrency=_number(env, "ASSAY_MAX_CONCURRENCY", 64, int,
                                    minimum=1),
            db_pool_max_size=_number(env, "ASSAY_DB_POOL_SIZE", 10, int, minimum=2),
            recovery_interval_s=_number(env, "ASSAY_RECOVERY_INTERVAL_S", 15.0,
                                        float, minimum=0.1),
            drain_s=_number(env, "ASSAY_WORKER_DRAIN_S", 30.0, float, minimum=0.0),
            max_request_bytes=_number(env, "ASSAY_MAX_REQUEST_BYTES",
                                      10 * 1024 * 1024, int, minimum=1024),
            max_query_depth=_number(env, "ASSAY_MAX_QUERY_DEPTH", 12, int,
                                    minimum=3),
            max_query_aliases=_number(env, "ASSAY_MAX_QUERY_ALIASES", 30, int,
                                      minimum=1),
            max_query_tokens=_number(env, "ASSAY_MAX_QUERY_TOKENS", 5_000, int,
                                     minimum=100),
            max_query_chars=_number(env, "ASSAY_MAX_QUERY_CHARS", 100_000, int,
                                    minimum=1_000),
            max_page_size=_number(env, "ASSAY_MAX_PAGE_SIZE", 500, int, minimum=1),
            max_cases_per_request=_number(env, "ASSAY_MAX_CASES_PER_REQUEST", 10_000,
                                          int, minimum=1),
            ws_keepalive_s=_number(env, "ASSAY_WS_KEEPALIVE_S", 5.0, float,
                                   minimum=0.5),
            idempotency_key_hours=_number(env, "ASSAY_IDEMPOTENCY_KEY_HOURS", 24.0,
                                          float, minimum=0.01, maximum=24 * 366),
            auth_enabled=_switch(env, "ASSAY_AUTH", True),
            cors_origins=_origins(env, "ASSAY_CORS_ORIGINS"),
            introspection=_switch(env, "ASSAY_INTROSPECTION", True),
            graphiql=_switch(env, "ASSAY_GRAPHIQL", True),
            key_check_s=_number(env, "ASSAY_KEY_CHECK_S", 5.0, float, minimum=0.1,
                                maximum=3600.0),
            api_key=env.get("ASSAY_API_KEY", "").strip() or None,
            model_rpm=_optional_number(env, "ASSAY_MODEL_RPM", minimum=1),
            part_cases=_number(env, "ASSAY_PART_CASES", 200, int, minimum=1),
            workers_per_evaluation=_number(env, "ASSAY_WORKERS_PER_EVALUATION", 4,
                                           int, minimum=1, maximum=256),
            model_max_calls=_optional_number(env, "ASSAY_MODEL_MAX_CALLS",
                                             minimum=1),
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def model_base_url(self) -> str:
        """Where model calls go: OPENAI_BASE_URL; else OpenAI itself when a key
        is set; else the simulator on its default local port."""
        if self.openai_base_url:
            return self.openai_base_url
        if self.openai_api_key:
            return OPENAI_URL
        return LOCAL_SIMULATOR_URL

    @property
    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs and messages."""
        return mask_password(self.database_url)

    @property
    def safe_redis_url(self) -> str:
        return mask_password(self.redis_url)


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _url(env: Mapping[str, str], name: str, default: str,
         schemes: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise SettingsError(
            f"{name} must be a URL starting with"
            f" {' or '.join(s + '://' for s in schemes)}"
            f", got {mask_password(value)!r}"
        )
    return value


def _optional_url(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if urlsplit(value).scheme not in ("http", "https"):
        raise SettingsError(f"{name} must be an http:// or https:// URL, got"
                            f" {mask_password(value)!r}")
    return value.rstrip("/")


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise SettingsError(
            f"{name} must be 1-64 letters, digits or _ . : -, got {value!r}"
        )
    return value


def _optional_number(env: Mapping[str, str], name: str, *,
                     minimum: int) -> int | None:
    if not env.get(name, "").strip():
        return None
    return _number(env, name, minimum, int, minimum=minimum)


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise SettingsError(f"{name} must be on or off, got {raw!r}")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of browser origins, each scheme://host[:port]."""
    origins = []
    for raw in env.get(name, "").split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin.lower())
        try:
            port = parts.port
        except ValueError:
            port = -1
        # An allow-list of every origin is not an allow-list: refuse "*".
        if (parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path or parts.query or parts.fragment
                or parts.username or parts.password or port == -1):
            raise SettingsError(
                f"{name} must list origins such as https://app.example.com"
                f" (scheme, host and optional port, comma-separated; '*' is not"
                f" allowed), got {raw.strip()!r}")
        # Browsers leave a scheme's own port out of Origin; so must the list,
        # which is compared with it letter for letter.
        host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
        shown_port = "" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}"
        origins.append(f"{parts.scheme}://{host}{shown_port}")
    return tuple(origins)


def _number(env: Mapping[str, str], name: str, default: Number,
            kind: Callable[[str], Number], *, minimum: Number,
            maximum: Number | None = None) -> Number:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    # float() reads "nan" and "inf" too; neither is a usable setting.
    if value is None or not math.isfinite(value):
        raise SettingsError(
            f"{name} must be {'a whole number' if kind is int else 'a number'}"
            f", got {raw!r}"
        ) from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {raw!r}")
    return value
