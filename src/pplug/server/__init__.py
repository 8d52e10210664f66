"""``pplug serve``: one frozen LLM serving many users, each personalized by her stored history.

``create_app(ServerConfig(runs=[...]))`` builds the FastAPI app (see ``pplug.server.app``). The app is
imported lazily, so the store and config can be used without loading torch.
"""

from __future__ import annotations

from typing import Any

from pplug.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from pplug.server.app import create_app

        return create_app
    raise AttributeError(f"module 'pplug.server' has no attribute '{name}'")
