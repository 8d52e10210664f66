"""Server state and the FastAPI dependencies shared by the routes (state, tenant auth, task lookup)."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from pplug.server.auth import hash_key
from pplug.server.batching import MicroBatcher
from pplug.server.config import ServerConfig
from pplug.server.errors import ApiError
from pplug.server.guard import TENANT_SCOPE_KEY
from pplug.server.metrics import Metrics
from pplug.server.runtime import TaskModel, task_key
from pplug.server.store import Store


@dataclass
class ServerState:
    """Everything a request needs; one per app."""

    config: ServerConfig
    store: Store
    models: dict[str, TaskModel]  # task_key(name) -> served task
    metrics: Metrics
    batcher: MicroBatcher
    model_executor: Executor  # the single thread that runs torch (encoding on writes, generation)

    def model(self, name: str, param: str = "task") -> TaskModel:
        """The served task ``name`` or a 404 naming it and the served tasks."""
        m = self.models.get(task_key(name))
        if m is None:
            served = ", ".join(sorted(x.task.name for x in self.models.values()))
            raise ApiError(404, f"unknown {param} '{name}'; served tasks: {served}", param)
        return m


def get_state(request: Request) -> ServerState:
    return request.app.state.pplug


_bearer = HTTPBearer(auto_error=False, description="A tenant API key (`pplug serve --create-tenant NAME`).")


async def get_tenant(request: Request,
                     creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> int:
    """The tenant id owning the request's bearer key; 401 when the key is missing or unknown. The guard
    (``pplug.server.guard``) has checked the key already on ``/v1``; this only repeats it off that path."""
    if (tenant := request.scope.get(TENANT_SCOPE_KEY)) is not None:
        return tenant
    challenge = {"WWW-Authenticate": "Bearer"}
    if creds is None or not creds.credentials:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge)
    tenant = await run_in_threadpool(get_state(request).store.tenant_for, hash_key(creds.credentials))
    if tenant is None:
        raise ApiError(401, "invalid API key", headers=challenge)
    return tenant


State = Annotated[ServerState, Depends(get_state)]
Tenant = Annotated[int, Depends(get_tenant)]
