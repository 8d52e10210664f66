"""Frozen LLM backbones behind one interface (decoder-only and encoder-decoder look the same).

    backbone = load_backbone(BackboneConfig("smollm2-135m"))
    batch = backbone.build([PromptParts(text="...")], soft=soft, targets=["gold"])  # soft: [b, k, d]
    backbone.loss(batch).backward()
"""

from __future__ import annotations

from pplug.backbones.base import Backbone, BackboneConfig, Batch, PromptParts
from pplug.backbones.causal import CausalBackbone
from pplug.backbones.loading import BUNDLED, cache_root, load_backbone, resolve_model_dir
from pplug.backbones.seq2seq import Seq2SeqBackbone

__all__ = [
    "BUNDLED",
    "Backbone",
    "BackboneConfig",
    "Batch",
    "CausalBackbone",
    "PromptParts",
    "Seq2SeqBackbone",
    "cache_root",
    "load_backbone",
    "resolve_model_dir",
]
