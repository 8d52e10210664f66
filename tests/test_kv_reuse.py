"""Frozen-prefix reuse (soft tokens after the text): the cached path equals the full forward of the same layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pplug.backbones import BackboneConfig, PromptParts, load_backbone
from pplug.backbones.kv_reuse import SharedPrefixes, common_prefix
from pplug.vocab_prior import VocabBias

INSTR = "which category does this note belong to among the following categories "
PARTS = [
    PromptParts(text=INSTR + "the cat sat on the mat and the dog ran in the park"),
    PromptParts(text=INSTR + "researchers tested a new battery"),
    PromptParts(text=INSTR + "just answer", prefix="past items of this user"),
]
TARGETS = ["sports", "a new battery design", "music"]


@pytest.fixture()
def llama(tiny_llama_dir):
    bb = load_backbone(BackboneConfig(name_or_path=str(tiny_llama_dir)))
    torch.manual_seed(1)
    with torch.no_grad():  # larger weights: greedy choices depend on context and are far from ties
        for p in bb.model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return bb


def _soft(bb, b: int, k: int = 3, grad: bool = False) -> torch.Tensor:
    torch.manual_seed(2)
    soft = torch.randn(b, k, bb.hidden_size)
    return (soft / soft.norm(dim=-1, keepdim=True) * bb.embedding_norm()).requires_grad_(grad)


def _full(batch):
    """The same batch run as one plain forward (no frozen-prefix reuse)."""
    return dataclasses.replace(batch, frozen_len=0, shared_len=0)


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([[5, 6]]) == 2
    assert common_prefix([[1], [2]]) == 0


def test_layout_soft_after_text(llama):
    soft = _soft(llama, 3)
    batch = llama.build(PARTS, soft, targets=TARGETS, soft_after_text=True)
    assert batch.shared_len > 0 and batch.frozen_len > batch.shared_len
    assert (batch.soft_positions >= batch.frozen_len).all()  # every soft token after the frozen columns
    assert (batch.labels[:, : batch.frozen_len] == -100).all()
    assert (batch.input_ids[:, : batch.shared_len] == batch.input_ids[:1, : batch.shared_len]).all()


def test_frozen_loss_and_grad_match_full_forward(llama):
    soft = _soft(llama, 3, grad=True)
    batch = llama.build(PARTS, soft, targets=TARGETS, soft_after_text=True)
    fast = llama.loss(batch, reduction="none")
    (g_fast,) = torch.autograd.grad(fast.sum(), soft)
    slow = llama.loss(_full(llama.build(PARTS, soft, targets=TARGETS, soft_after_text=True)), reduction="none")
    (g_slow,) = torch.autograd.grad(slow.sum(), soft)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)
    assert len(llama.shared_prefixes) == 1  # the shared instruction was computed once and kept


def test_padding_gaps_change_nothing(llama):
    """Each row alone (no padding at all) gives the same loss as inside the segmented batch."""
    soft = _soft(llama, 3)
    batched = llama.loss(llama.build(PARTS, soft, targets=TARGETS, soft_after_text=True), reduction="none")
    for i in range(3):
        alone = llama.loss(llama.build(PARTS[i:i + 1], soft[i:i + 1], targets=TARGETS[i:i + 1],
                                       soft_after_text=True))
        assert torch.allclose(batched[i], alone, atol=1e-5)


def test_shared_prefix_hit_gives_same_result(llama):
    soft = _soft(llama, 3)
    batch = llama.build(PARTS, soft, soft_after_text=True)
    first = llama.score_options(batch, ["sports", "music"])
    assert len(llama.shared_prefixes) == 1
    again = llama.score_options(batch, ["sports", "music"])  # served from the LRU
    assert torch.allclose(first, again, atol=1e-5)


def test_score_options_and_greedy_match_full_forward(llama):
    soft = _soft(llama, 3)
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, True]])
    batch = llama.build(PARTS, soft, mask, soft_after_text=True)
    with torch.no_grad():
        fast = llama.score_options(batch, ["sports", "music", "a new battery design"])
        slow = llama.score_options(_full(batch), ["sports", "music", "a new battery design"])
        assert torch.allclose(fast, slow, atol=1e-4)
        assert llama.generate(batch, max_new_tokens=6) == llama.generate(_full(batch), max_new_tokens=6)
        bias = torch.zeros(3, llama.model.get_input_embeddings().weight.shape[0])
        bias[0, 5], bias[1, 7], bias[2, 9] = 50.0, 3.0, 50.0  # a logits processor: same tokens on both paths
        biased = llama.generate(batch, max_new_tokens=6, logits_processor=VocabBias(bias))
        assert biased == llama.generate(_full(batch), max_new_tokens=6, logits_processor=VocabBias(bias))
        assert biased != llama.generate(batch, max_new_tokens=6)


def test_lru_bounded():
    lru = SharedPrefixes(size=2)
    t = torch.zeros(1, 1, 1)
    for i in range(3):
        lru.put([i, i], [], t)
    assert len(lru) == 2 and lru.lookup([0, 0, 5])[0] == 0 and lru.lookup([2, 2, 5])[0] == 2


def test_seq2seq_soft_after_text(tiny_t5_dir):
    bb = load_backbone(BackboneConfig(name_or_path=str(tiny_t5_dir)))
    soft = _soft(bb, 3, grad=True)
    before = bb.build(PARTS, soft, targets=TARGETS)
    after = bb.build(PARTS, soft, targets=TARGETS, soft_after_text=True)
    assert after.frozen_len == 0  # bidirectional encoder: nothing is reusable
    assert (after.soft_positions > before.soft_positions).all()
    loss = bb.loss(after)
    loss.backward()
    assert torch.isfinite(loss) and soft.grad is not None


def test_packed_option_scores_match_one_row_per_option(llama):
    soft = _soft(llama, 3)
    options = ["sports", "music", "a new battery design", "the"]
    with torch.no_grad():
        for after in (False, True):
            batch = llama.build(PARTS, soft, soft_after_text=after)
            packed = llama.score_options(batch, options)
            llama.packed_options = False
            repeated = llama.score_options(llama.build(PARTS, soft, soft_after_text=after), options)
            llama.packed_options = True
            assert torch.allclose(packed, repeated, atol=1e-4)


def test_frozen_rows_memo_gives_same_loss_and_grad(llama):
    soft = _soft(llama, 3, grad=True)
    ref = llama.loss(llama.build(PARTS, soft, targets=TARGETS, soft_after_text=True), reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), soft)
    llama.frozen_rows.max_bytes = 2**30
    for rows in ([0, 1], [0, 1, 2], [0, 1, 2]):  # [0, 1] share more columns than [0, 1, 2]; the last pass hits
        sub = soft[rows].detach().requires_grad_(True)
        got = llama.loss(llama.build([PARTS[i] for i in rows], sub, targets=[TARGETS[i] for i in rows],
                                     soft_after_text=True), reduction="none")
        (g,) = torch.autograd.grad(got.sum(), sub)
        assert torch.allclose(got, ref[rows], atol=1e-5) and torch.allclose(g, g_ref[rows], atol=1e-5)
    assert len(llama.frozen_rows) == 5  # the key holds the shared length: 2 rows + 3 rows, no growth on the hit
    llama.frozen_rows.max_bytes = 1  # over the cap: entries are evicted
    llama.frozen_rows.put((9,), llama.frozen_rows.get(next(iter(llama.frozen_rows._items)))[0], torch.zeros(2))
    assert len(llama.frozen_rows) == 0 and llama.frozen_rows.bytes == 0
