"""``pplug serve``: the personalization server (FastAPI + uvicorn) for many users on one frozen model.

Flags map onto ``pplug.server.config.ServerConfig`` fields. ``--create-tenant NAME`` prints a fresh API key
once (stored hashed) and exits. Also runnable as ``python -m pplug.cli.serve_cmd``.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def create_tenant_key(db_url: str, tenant: str, synchronous: str = "FULL") -> str:
    """Create ``tenant`` if needed and give it a fresh API key; returns the key (only its hash is stored)."""
    from pplug.server.auth import hash_key, new_key
    from pplug.server.store import Store

    key, store = new_key(), Store(db_url, synchronous)
    try:
        store.add_key(tenant, hash_key(key))
    finally:
        store.close()
    return key


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
    db: Annotated[str | None, Opt(help="SQLAlchemy URL of the user store (default: SQLite under $PPLUG_CACHE).")]
    = None,
    host: Annotated[str, Opt(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port (0 = a free one; the first stdout line names it).")] = 8000,
    batch_window_ms: Annotated[float, Opt(help="Micro-batching window in ms (0 = no waiting).")] = 10.0,
    max_batch_size: Annotated[int, Opt(help="Generate requests per backbone call (1 = batching off).")] = 8,
    max_input_chars: Annotated[int, Opt(help="Input length limit (413 beyond).")] = 8000,
    max_items_per_request: Annotated[int, Opt(help="History items per write (413 beyond).")] = 256,
    max_history_items: Annotated[int, Opt(help="History items per user (413 beyond).")] = 5000,
    sqlite_synchronous: Annotated[str, Opt(help="SQLite synchronous: FULL or NORMAL.")] = "FULL",
    threads: Annotated[int | None, Opt(help="torch CPU threads (default: torch's).")] = None,
    create_tenant: Annotated[str | None, Opt(help="Create a tenant (or add a key to it), print its new API "
                                                  "key once, and exit.")] = None,
    log_level: Annotated[str, Opt(help="uvicorn log level.")] = "info",
) -> None:
    """Serve personalized generation for many users on one frozen LLM (docs at /docs)."""
    from pplug.errors import PPlugError
    from pplug.server.config import ServerConfig

    config = ServerConfig(runs=[str(r) for r in run or []], db_url=db or "", batch_window_ms=batch_window_ms,
                          max_batch_size=max_batch_size, max_input_chars=max_input_chars,
                          max_items_per_request=max_items_per_request, max_history_items=max_history_items,
                          sqlite_synchronous=sqlite_synchronous)
    if create_tenant is not None:
        key = create_tenant_key(config.resolved_db_url(), create_tenant, config.sqlite_synchronous)
        typer.echo(json.dumps({"tenant": create_tenant, "api_key": key,
                               "note": "shown once; only its hash is stored"}))
        return
    if not config.runs:
        raise PPlugError("pass --run RUN (a run folder made by `pplug train`), or --create-tenant NAME")
    from pplug.runner import runtime_config

    for r in config.runs:
        runtime_config(r)  # config and weights present: fail before printing a URL or loading models
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

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
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
