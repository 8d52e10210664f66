"""The request guard: a plain ASGI middleware in front of every route.

In order, before any route code runs:
1. the path must be valid UTF-8 once percent-decoded (else 422), so two different byte strings can never
   name the same user;
2. a ``Content-Length`` above ``max_body_bytes`` is refused (413) at once;
3. on ``/v1`` the bearer key is checked *before the body is read* (401; failed checks are counted per
   client address and refused with 429 + ``Retry-After`` beyond ``auth_fail_limit``), then the tenant's
   rate limit (429 + ``Retry-After``); the tenant id is left in the scope for the routes;
4. the body is read, counting bytes as they arrive (chunked bodies too), and refused with 413 as soon as
   it passes ``max_body_bytes``; the route then gets the buffered body.
It also records every request in the metrics (method, route template, status, seconds) and turns an
unhandled error into a 500 without the server dying.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pplug.server.auth import hash_key
from pplug.server.errors import error_response
from pplug.server.ratelimit import RateLimiter

log = logging.getLogger("pplug.server")
TENANT_SCOPE_KEY = "pplug.tenant"  # the tenant id the guard authenticated, for the routes
CHALLENGE = {"WWW-Authenticate": "Bearer"}


class BodyTooLarge(Exception):
    pass


class Guard:
    """The middleware (``app.add_middleware(Guard, state=..., templates=...)``).

    Args:
        app: the wrapped ASGI app.
        state: the server state (config, store, metrics).
        templates: gives the app's route templates (``/v1/users/{user_id}``), to label refused requests.
    """

    def __init__(self, app: ASGIApp, state: Any, templates: Callable[[], Iterable[str]]):
        self.app, self.state, self.templates = app, state, templates
        self._patterns: list[tuple[re.Pattern, str]] | None = None
        cfg = state.config
        self.tenant_limit = RateLimiter(cfg.rate_limit, cfg.rate_limit_storage, "pplug-tenant")
        self.auth_limit = RateLimiter(cfg.auth_fail_limit, cfg.rate_limit_storage, "pplug-auth-fail")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]  # 0 = no response started

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal, receive = await self._admit(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        except Exception:  # the server never dies on a request
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status[0] == 0:  # nothing sent yet
                await error_response(500, "internal server error")(scope, receive, send_observed)
        self.state.metrics.observe_request(scope["method"], self._template(scope), status[0] or 500,
                                           time.perf_counter() - t0)

    async def _admit(self, scope: Scope, receive: Receive) -> tuple[Any, Receive]:
        """(a refusal response or None, the receive the app should use)."""
        cfg = self.state.config
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return error_response(422, "the path is not valid UTF-8 once percent-decoded", "path"), receive
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > cfg.max_body_bytes:
            return self._too_large(length), receive
        if scope["path"].startswith("/v1/"):
            refusal = await self._authenticate(scope, headers)
            if refusal is not None:
                return refusal, receive
        try:
            body = await _read_body(receive, cfg.max_body_bytes)
        except BodyTooLarge:
            return self._too_large("more than"), receive
        return None, _replay(body, receive)

    async def _authenticate(self, scope: Scope, headers: dict[bytes, bytes]) -> Any:
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return error_response(401, "missing API key: send 'Authorization: Bearer <key>'", headers=CHALLENGE)
        tenant = await run_in_threadpool(self.state.store.tenant_for, hash_key(key))
        if tenant is None:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.auth_limit.hit(client)
            if wait is not None:
                return error_response(429, f"too many invalid API keys from this address; retry in {wait} s "
                                           "(auth_fail_limit)", headers={"Retry-After": str(wait)})
            return error_response(401, "invalid API key", headers=CHALLENGE)
        wait = self.tenant_limit.hit(str(tenant))
        if wait is not None:
            return error_response(429, f"rate limit of this tenant reached ({self.state.config.rate_limit}); "
                                       f"retry in {wait} s (rate_limit)", headers={"Retry-After": str(wait)})
        scope[TENANT_SCOPE_KEY] = tenant
        return None

    def _too_large(self, length: str) -> Any:
        limit = self.state.config.max_body_bytes
        return error_response(413, f"request body of {length} bytes; the limit is {limit} (max_body_bytes)")

    def _template(self, scope: Scope) -> str:
        route = getattr(scope.get("route"), "path", None)
        if route is None:  # refused before routing: find the route template it was for
            if self._patterns is None:
                self._patterns = [(re.compile(re.sub(r"\\{[^/]*?\\}", "[^/]+", re.escape(t)) + "$"), t)
                                  for t in self.templates()]
            route = next((t for rx, t in self._patterns if rx.match(scope["path"])), None)
        return route or "<unmatched>"


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or BodyTooLarge as soon as more than ``limit`` bytes arrived."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away mid-body
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the buffered body once, then the real one (which reports the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
