"""pplug: personalize frozen LLMs for each of their users (PPlug, OPPU, retrieval baselines)."""

from __future__ import annotations

import os

# No model hub is reachable here: never try the network unless the user explicitly opts in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
