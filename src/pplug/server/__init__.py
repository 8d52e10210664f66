"""``pplug serve``: one frozen LLM serving many users, each personalized by her stored history.

``create_app(ServerConfig(runs=[...]))`` builds the FastAPI app (see ``pplug.server.app``).
"""

from __future__ import annotations

from pplug.server.app import create_app
from pplug.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
