"""``pplug serve``: the personalization server (FastAPI + uvicorn) for many users on one frozen model.

Flags map onto ``pplug.server.config.ServerConfig`` fields. Key management (each prints JSON and exits):
``--create-tenant NAME`` prints a fresh API key once (stored hashed); ``--list-keys``; ``--revoke-key ID``;
``--rotate-key ID``; ``--delete-tenant NAME --yes`` (the tenant with all its data).
Also runnable as ``python -m pplug.cli.serve_cmd``.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pplug.cli.options import DeviceOpt, DtypeOpt, device_overrides

Opt = typer.Option


def create_tenant_key(db_url: str, tenant: str, synchronous: str = "FULL") -> str:
    """Create ``tenant`` if needed and give it a fresh API key; returns the key (only its hash is stored)."""
    return manage_keys(db_url, synchronous, create_tenant=tenant)["api_key"]


def manage_keys(db_url: str, synchronous: str = "FULL", create_tenant: str | None = None, list_keys: bool = False,
                revoke_key: int | None = None, rotate_key: int | None = None,
                delete_tenant: str | None = None) -> Any:
    """Run the one key-management action asked for (see ``pplug.server.admin``); its JSON-able result.
    Bad names and unknown ids raise PPlugError (one line, exit 2)."""
    from pplug.errors import PPlugError
    from pplug.server import admin
    from pplug.server.store import Store

    store = Store(db_url, synchronous)
    try:
        if create_tenant is not None:
            return admin.create_key(store, create_tenant) | {"note": "shown once; only its hash is stored"}
        if list_keys:
            return admin.list_keys(store)
        if revoke_key is not None:
            return admin.revoke_key(store, revoke_key)
        if rotate_key is not None:
            return admin.rotate_key(store, rotate_key) | {"note": "shown once; the old key no longer works"}
        if delete_tenant is not None:
            return admin.delete_tenant(store, delete_tenant)
        raise PPlugError("no key-management action given")
    except (ValueError, admin.AdminError) as e:
        raise PPlugError(str(e)) from None
    finally:
        store.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port=0``: a free one); connections queue until the server accepts them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    run: Annotated[list[Path] | None, Opt(help="Run folder made by `pplug train` (repeat: one per task).")] = None,
    db: Annotated[str | None, Opt(help="SQLAlchemy URL of the user store (default: SQLite under $PPLUG_CACHE); "
                                       "postgresql+psycopg://USER@HOST/DB to share one among replicas.")] = None,
    host: Annotated[str, Opt(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port (0 = a free one; the first stdout line names it).")] = 8000,
    batch_window_ms: Annotated[float, Opt(help="Micro-batching window in ms (0 = no waiting).")] = 10.0,
    max_batch_size: Annotated[int, Opt(help="Generate requests per backbone call (1 = batching off).")] = 8,
    max_input_chars: Annotated[int, Opt(help="Input length limit (413 beyond).")] = 8000,
    max_items_per_request: Annotated[int, Opt(help="History items per write (413 beyond).")] = 256,
    max_history_items: Annotated[int, Opt(help="History items per user (413 beyond).")] = 5000,
    sqlite_synchronous: Annotated[str, Opt(help="SQLite synchronous: FULL or NORMAL.")] = "FULL",
    threads: Annotated[int | None, Opt(help="torch CPU threads (default: torch's).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_body_bytes: Annotated[int, Opt(help="Request body limit in bytes (413 beyond; chunked bodies too).")]
    = 4_000_000,
    max_request_cost: Annotated[int, Opt(help="Generate cost cap: input tokens x beams x new tokens (413 beyond).")]
    = 300_000,
    request_timeout_s: Annotated[float, Opt(help="Per-request generation deadline in seconds (504 beyond).")] = 60.0,
    max_queue_per_tenant: Annotated[int, Opt(help="One tenant's waiting generate requests (429 beyond).")] = 64,
    rate_limit: Annotated[str, Opt(help="Per-tenant rate on /v1, e.g. '600/minute' ('' = off; 429 beyond).")] = "",
    auth_fail_limit: Annotated[str, Opt(help="Failed key checks per client address ('' = off; 429 beyond).")]
    = "30/minute",
    rate_limit_storage: Annotated[str, Opt(help="`limits` storage URI (redis://... to share across replicas).")]
    = "memory://",
    metrics_key: Annotated[str | None, Opt(envvar="PPLUG_METRICS_KEY", help="Require 'Bearer KEY' on /metrics "
                                                                             "(better set PPLUG_METRICS_KEY).")]
    = None,
    create_tenant: Annotated[str | None, Opt(help="Create a tenant (or add a key to it), print its new API "
                                                  "key once, and exit.")] = None,
    list_keys: Annotated[bool, Opt("--list-keys", help="List keys (id, tenant, fingerprint; never the key) and exit.")]
    = False,
    revoke_key: Annotated[int | None, Opt(help="Revoke the key with this id (see --list-keys) and exit.")] = None,
    rotate_key: Annotated[int | None, Opt(help="Replace the key with this id by a new one (printed once) and exit.")]
    = None,
    delete_tenant: Annotated[str | None, Opt(help="Delete this tenant with all its users, items and keys, and exit "
                                                  "(needs --yes).")] = None,
    yes: Annotated[bool, Opt("--yes", help="Confirm --delete-tenant.")] = False,
    log_level: Annotated[str, Opt(help="uvicorn log level.")] = "info",
) -> None:
    """Serve personalized generation for many users on one frozen LLM (docs at /docs)."""
    from pplug.errors import PPlugError
    from pplug.server.config import ServerConfig

    config = ServerConfig(runs=[str(r) for r in run or []], db_url=db or "", batch_window_ms=batch_window_ms,
                          max_batch_size=max_batch_size, max_input_chars=max_input_chars,
                          max_items_per_request=max_items_per_request, max_history_items=max_history_items,
                          sqlite_synchronous=sqlite_synchronous, max_body_bytes=max_body_bytes,
                          max_request_cost=max_request_cost, request_timeout_s=request_timeout_s,
                          max_queue_per_tenant=max_queue_per_tenant, rate_limit=rate_limit,
                          auth_fail_limit=auth_fail_limit, rate_limit_storage=rate_limit_storage,
                          metrics_key=metrics_key or None, run_overrides=device_overrides(device, dtype))
    if delete_tenant is not None and not yes:
        raise PPlugError(f"--delete-tenant {delete_tenant} deletes all its users and items: add --yes to confirm")
    actions = dict(create_tenant=create_tenant, list_keys=list_keys, revoke_key=revoke_key, rotate_key=rotate_key,
                   delete_tenant=delete_tenant)
    if sum(v not in (None, False) for v in actions.values()) > 1:
        raise PPlugError("give one of --create-tenant, --list-keys, --revoke-key, --rotate-key, --delete-tenant")
    if any(v not in (None, False) for v in actions.values()):
        typer.echo(json.dumps(manage_keys(config.resolved_db_url(), config.sqlite_synchronous, **actions)))
        return
    if not config.runs:
        raise PPlugError("pass --run RUN (a run folder made by `pplug train`), or --create-tenant NAME")
    from pplug.runner import runtime_config

    for r in config.runs:
        runtime_config(r, overrides=config.run_overrides)  # config, weights, device: fail before printing a URL
    import uvicorn

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sock = bind(host, port)  # bound before loading, so a client may connect at once and waits
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    from sqlalchemy.engine import make_url

    db_shown = make_url(config.resolved_db_url()).render_as_string(hide_password=True)
    typer.echo(json.dumps({"url": f"http://{shown}:{actual}", "db": db_shown}))
    sys.stdout.flush()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pplug.server.app import create_app
    from pplug.server.logs import quiet_query_strings

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    quiet_query_strings()  # after uvicorn configured its loggers
    server.run(sockets=[sock])


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``pplug`` command line."""
    app.command()(serve)


def main() -> None:
    """``python -m pplug.cli.serve_cmd``: the serve command on its own (user errors: one line, exit 2)."""
    from pplug.errors import PPlugError

    try:
        typer.run(serve)
    except PPlugError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
