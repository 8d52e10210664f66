"""One error shape for every failure: ``{"error": {"type", "message", "param", "details"}}`` (OpenAI-like).

Validation errors are field-level (``param`` names the first bad field, ``details`` lists all of them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("pplug.server")

_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 422: "invalid_request", 429: "rate_limited", 499: "client_closed_request",
          500: "internal_error", 503: "unavailable", 504: "timeout"}


class ApiError(Exception):
    """An HTTP error with a message that says what to fix.

    Args:
        status: HTTP status code.
        message: the message (name the field, the id, the limit).
        param: the request field at fault, dotted (``items[2].fields``), if any.
    """

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def error_response(status: int, message: str, param: str | None = None, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": _TYPES.get(status, "error"), "message": message}
    if param is not None:
        body["param"] = param
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "items", 0, "fields")`` -> ``items[0].fields`` (``body`` alone for a malformed body)."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") and len(loc) > 1 else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _detail(err: dict[str, Any]) -> dict[str, Any]:
    loc, kind = err.get("loc", ()), err.get("type", "")
    if kind == "json_invalid":  # loc is ("body", character offset)
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return {"field": "body", "message": f"invalid JSON{where}: {err.get('ctx', {}).get('error', '')}".rstrip(": "),
                "type": kind}
    return {"field": field_path(loc), "message": err.get("msg", "invalid"), "type": kind}


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, validation errors and Starlette HTTP errors onto the error shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        details = [_detail(err) for err in e.errors()]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        if len(details) > 5:
            message += f"; and {len(details) - 5} more"
        return error_response(422, message, details[0]["field"] if details else None, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))
