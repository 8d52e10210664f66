"""Logging hygiene: access-log lines carry the path only, never the query string (it may hold ids or tokens)."""

from __future__ import annotations

import logging


class DropQueryString(logging.Filter):
    """Cuts ``?...`` off the path of uvicorn's access-log records (args: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def quiet_query_strings(logger: str = "uvicorn.access") -> None:
    """Install ``DropQueryString`` on ``logger`` (idempotent)."""
    log = logging.getLogger(logger)
    if not any(isinstance(f, DropQueryString) for f in log.filters):
        log.addFilter(DropQueryString())
