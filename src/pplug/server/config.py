"""The server config: one typed dataclass; ``pplug serve`` flags map onto its fields."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_db_url() -> str:
    """``sqlite:///$PPLUG_CACHE/pplug-server.sqlite`` (``PPLUG_CACHE`` defaults to ``~/.cache/pplug``)."""
    cache = Path(os.environ.get("PPLUG_CACHE", "~/.cache/pplug")).expanduser()
    return f"sqlite:///{cache / 'pplug-server.sqlite'}"


@dataclass
class ServerConfig:
    runs: list[str] = field(default_factory=list)  # run folders (`pplug train`), one per task, keyed by task name
    db_url: str = ""  # SQLAlchemy URL of the user store; "" = default_db_url() (SQLite, WAL); postgresql+psycopg://...
    # (one PostgreSQL database shared by several `pplug serve` replicas: docs/postgres.md)
    sqlite_synchronous: str = "FULL"  # SQLite: FULL (durable against power loss) or NORMAL (against process kill)
    batch_window_ms: float = 10.0  # micro-batching: wait this long for more generate requests (0 = no waiting)
    max_batch_size: int = 8  # micro-batching: requests per backbone call (1 = batching off)
    max_queue: int = 256  # generate requests waiting for the model beyond this get 503
    max_input_chars: int = 8000  # generate/chat input length limit (413 beyond)
    max_items_per_request: int = 256  # history items per write request (413 beyond)
    max_item_chars: int = 8000  # characters of one item's fields together (413 beyond)
    max_history_items: int = 5000  # stored history items per user (413 when a write would pass it)
    max_new_tokens_limit: int = 256  # largest max_new_tokens a request may ask for (422 beyond)
    max_body_bytes: int = 4_000_000  # request bodies beyond this get 413 (counted while reading; chunked too)
    max_request_cost: int = 300_000  # generate cost cap: input tokens x beams x new tokens (413 beyond)
    request_timeout_s: float = 60.0  # per-request deadline for generation, queue wait included (504 beyond)
    max_queue_per_tenant: int = 64  # one tenant's generate requests waiting for the model beyond this get 429
    rate_limit: str = ""  # per-tenant request rate on /v1, e.g. "600/minute" ("" = off); 429 + Retry-After beyond
    auth_fail_limit: str = "30/minute"  # failed key checks per client address ("" = off); 429 + Retry-After beyond
    rate_limit_storage: str = "memory://"  # `limits` storage URI; share one (e.g. redis://) across replicas
    max_list_offset: int = 1_000_000  # largest `offset` when listing items (422 beyond)
    metrics_key: str | None = None  # when set, GET /metrics needs `Authorization: Bearer <metrics_key>`
    tenants: dict[str, str] = field(default_factory=dict)  # bootstrap {tenant name: API key} (stored hashed)
    embedding_cache: str | None = None  # the methods' own query/item embedding cache; None = in memory
    run_overrides: list[str] = field(default_factory=list)  # applied to every run, e.g. ["device=cuda"] (--device)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"sqlite_synchronous must be FULL, NORMAL or EXTRA, got '{self.sqlite_synchronous}'")
        for name in ("max_queue", "max_input_chars", "max_items_per_request", "max_item_chars",
                     "max_history_items", "max_new_tokens_limit", "max_body_bytes", "max_request_cost",
                     "max_queue_per_tenant", "max_list_offset"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        from pplug.server.ratelimit import parse_limit

        parse_limit(self.rate_limit, "rate_limit"), parse_limit(self.auth_fail_limit, "auth_fail_limit")

    def resolved_db_url(self) -> str:
        return self.db_url or default_db_url()
