"""pplug: personalize frozen LLMs for each of their users (PPlug, OPPU, retrieval baselines).

``from pplug import PPlug`` loads a trained run (``PPlug.from_pretrained(run_dir)``). Importing pplug changes
no environment variable: pplug's own loaders read local files only (``local_files_only=True``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["PPlug", "HistoryItem", "Question", "Prediction", "__version__"]

_LAZY = {"PPlug": "pplug.api", "HistoryItem": "pplug.data.records", "Question": "pplug.data.records",
         "Prediction": "pplug.methods.base"}


def __getattr__(name: str) -> Any:
    """Load the API lazily, so ``import pplug`` (e.g. by the data-only CLI commands) does not import torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pplug' has no attribute {name!r}")
