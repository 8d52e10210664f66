"""Shared, lazily loaded frozen resources (backbone, history encoder), so methods run side by side on one model."""

from __future__ import annotations

from pathlib import Path

import torch

from pplug.backbones import Backbone, BackboneConfig, load_backbone
from pplug.embedding_cache import CachedEncoder, EmbeddingCache, default_cache_path
from pplug.encoders import EncoderConfig, load_encoder


class Resources:
    """Loads each frozen backbone / encoder once per process.

    Args:
        embedding_cache: SQLite file for history embeddings; ``None`` keeps them in memory only.
    """

    def __init__(self, embedding_cache: str | Path | None = "default"):
        self.cache_path = default_cache_path() if embedding_cache == "default" else embedding_cache
        self._backbones: dict[str, Backbone] = {}
        self._encoders: dict[str, CachedEncoder] = {}

    def backbone(self, config: BackboneConfig, device: torch.device | str = "cpu") -> Backbone:
        """The frozen backbone of ``config`` on ``device`` (a resolved device, see `pplug.devices`)."""
        key = f"{config!r}@{torch.device(device)}"
        if key not in self._backbones:
            self._backbones[key] = load_backbone(config, device)
        return self._backbones[key]

    def encoder(self, config: EncoderConfig, device: torch.device | str = "cpu") -> CachedEncoder:
        """The frozen history encoder on ``device`` behind the on-disk embedding cache."""
        key = f"{config!r}@{torch.device(device)}"
        if key not in self._encoders:
            enc = load_encoder(config, device).freeze()
            self._encoders[key] = CachedEncoder(enc, EmbeddingCache(self.cache_path, enc.name))
        return self._encoders[key]
