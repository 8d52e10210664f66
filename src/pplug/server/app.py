"""The app factory: ``create_app(ServerConfig)`` -> a FastAPI app serving many users on one frozen model.

Routes (JSON, versioned under ``/v1``; OpenAPI docs at ``/docs``):
    POST   /v1/users/{user_id}/items            add history items (batch), embedded once on write
    GET    /v1/users/{user_id}/items            list them (paged)
    DELETE /v1/users/{user_id}/items[/{item}]   delete one or all items
    GET    /v1/users                            your users and their history sizes (paged)
    GET    /v1/users/{user_id}                  the user's history size
    DELETE /v1/users/{user_id}                  delete a user and everything of hers
    POST   /v1/generate                         personalized output + explanation + latency
    POST   /v1/chat/completions, GET /v1/models OpenAI-compatible (``user`` = the user)
    GET    /v1/tasks                            served tasks
    GET    /healthz, GET /metrics[?format=json] liveness; request counts, latency and batch-size histograms
    GET    /playground (``/`` redirects)        a browser page over this API (``pplug.server.playground``)
Every /v1 route needs ``Authorization: Bearer <tenant key>``; a tenant only ever sees its own users.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from pplug.resources import Resources
from pplug.server.auth import hash_key
from pplug.server.batching import MicroBatcher
from pplug.server.config import ServerConfig
from pplug.server.deps import ServerState, State
from pplug.server.errors import ApiError, install_error_handlers
from pplug.server.guard import Guard
from pplug.server.logs import quiet_query_strings
from pplug.server.metrics import Metrics
from pplug.server.playground import router as playground_router
from pplug.server.routes_generate import router as generate_router
from pplug.server.routes_items import router as items_router
from pplug.server.runtime import backfill, load_models, run_batch
from pplug.server.store import Store

log = logging.getLogger("pplug.server")


def create_app(config: ServerConfig, resources: Resources | None = None) -> FastAPI:
    """Open the store, load the runs, embed any stored items a served task lacks, and build the app.

    Args:
        config: the server config (runs, database URL, batching, limits, bootstrap tenant keys).
        resources: shared frozen models (tests pass one so several apps load the backbone once).

    Returns:
        the app; its lifespan starts and stops the micro-batching worker.
    """
    store = Store(config.resolved_db_url(), config.sqlite_synchronous)
    for tenant, key in config.tenants.items():
        store.add_key(tenant, hash_key(key))
    models = load_models(list(config.runs), resources or Resources(config.embedding_cache), config.run_overrides)
    backfill(store, models)
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pplug-model")
    batcher = MicroBatcher(partial(run_batch, models), executor, config.batch_window_ms, config.max_batch_size,
                           config.max_queue, metrics, config.max_queue_per_tenant)
    state = ServerState(config, store, models, metrics, batcher, executor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            store.close()

    from pplug import __version__

    app = FastAPI(title="pplug", version=__version__, lifespan=lifespan, docs_url="/docs",
                  description="Personalize one frozen LLM for many users with PPlug user embeddings.")
    app.state.pplug = state
    install_error_handlers(app)
    app.include_router(items_router)
    app.include_router(generate_router)
    app.include_router(playground_router)
    _add_service_routes(app)

    # bodies, keys, rate limits and metrics, before any route
    app.add_middleware(Guard, state=state, templates=lambda: app.openapi()["paths"])
    quiet_query_strings()

    return app


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["service"])
    async def healthz(st: State) -> JSONResponse:
        """Liveness and database reachability (no key needed)."""
        try:
            await run_in_threadpool(st.store.ping)
        except Exception as e:  # report (the type only: this route needs no key), don't die
            log.warning("health check: database unreachable: %s", e)
            return JSONResponse({"status": "unavailable", "db": type(e).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "db": "ok", "tasks": sorted(m.task.name for m in st.models.values()),
                             "batching": {"window_ms": st.config.batch_window_ms,
                                          "max_batch_size": st.config.max_batch_size}})

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics(request: Request, st: State, format: str = "prometheus") -> Response:
        """Request counts, latency and batch-size histograms (Prometheus text; ``?format=json`` for JSON).
        Needs ``Authorization: Bearer <metrics_key>`` when the server has a metrics key."""
        if st.config.metrics_key:
            sent = request.headers.get("authorization", "").partition(" ")[2].strip()
            if not hmac.compare_digest(sent.encode(), st.config.metrics_key.encode()):
                raise ApiError(401, "/metrics needs 'Authorization: Bearer <metrics key>'",
                               headers={"WWW-Authenticate": "Bearer"})
        if format == "json":
            return JSONResponse(st.metrics.snapshot())
        return PlainTextResponse(st.metrics.render(), media_type="text/plain; version=0.0.4")
