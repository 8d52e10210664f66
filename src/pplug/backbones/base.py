"""The backbone interface: one frozen LLM behind `build`, `loss`, `generate` and `score_options`.

Callers never ask whether the model is decoder-only or encoder-decoder: they describe each
example as `PromptParts` (``[prefix text][soft tokens][text]``), get a `Batch` back from `build`,
and hand that batch to the other methods. `BackboneBase` holds what both kinds share: freezing,
the embedding norm, tokenization with truncation, and splicing soft tokens into the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class BackboneConfig:
    name_or_path: str = "smollm2-135m"  # bundled default (see loading.py) or a local HF folder
    max_prompt_tokens: int = 512  # prompt length cap; the text's body is cut from the right to fit (as LaMP does)
    max_target_tokens: int = 64  # target length cap incl. EOS; a cut target gets no EOS
    dtype: str = "float32"  # torch dtype name of the loaded weights: float32, bfloat16, float16


@dataclass
class PromptParts:
    """One example's input, in order: ``[prefix][soft tokens][text]``.

    ``text[:body_start]`` is its head (retrieved examples, the task instruction and label list) and
    ``text[body_start:]`` its body (the query, e.g. the abstract): an over-long prompt loses the end of
    the body first (``Task.body_start`` finds the split).
    """

    text: str  # the user-turn text (task input, possibly with retrieved examples)
    prefix: str = ""  # text placed BEFORE the soft tokens (PPlug+RAG: the top retrieved item)
    body_start: int = 0  # character offset in `text` where the body starts (0: all of it is body)


@dataclass
class Batch:
    """Model-ready tensors produced by `Backbone.build`; treat it as opaque outside the backbone."""

    inputs_embeds: Tensor  # [b, t, d] prompt (+ target for decoder-only) embeddings, soft tokens spliced in
    attention_mask: Tensor  # [b, t] 1 = real token, 0 = padding
    labels: Tensor | None  # decoder-only [b, t] (-100 but target tokens); seq2seq [b, t_out] (pad -100)
    position_ids: Tensor | None  # [b, t] decoder-only: cumsum(mask) - 1, clamped at 0; None for seq2seq
    input_ids: Tensor  # [b, t] token ids behind inputs_embeds; pad id at soft-token and padding slots
    soft_positions: Tensor  # [b, k] index on the t axis of each soft token, -1 where masked out (not spliced)
    frozen_len: int = 0  # leading columns with no soft token and no target: run once without grad, as a KV cache
    shared_len: int = 0  # leading columns identical in every row (<= frozen_len): computed once, cached per process

    def __len__(self) -> int:
        return self.inputs_embeds.shape[0]

    def target_tokens(self) -> Tensor:
        """[b] float: the labelled (target + EOS) tokens per example, the weights of a token-level mean."""
        if self.labels is None:
            raise ValueError("a batch built without targets has no target tokens")
        return (self.labels != -100).sum(-1).float()


@runtime_checkable
class Backbone(Protocol):
    """A frozen LLM (all params requires_grad False, eval mode) that takes soft tokens in its input."""

    config: BackboneConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    hidden_size: int  # d_lm, the width of inputs_embeds

    def embedding_norm(self) -> float: ...

    def build(self, parts: list[PromptParts], soft: Tensor | None = None, soft_mask: Tensor | None = None,
              targets: list[str] | None = None, soft_after_text: bool = False) -> Batch: ...

    def loss(self, batch: Batch, reduction: str = "mean") -> Tensor: ...

    def generate(self, batch: Batch, max_new_tokens: int = 32, num_beams: int = 1,
                 logits_processor: LogitsProcessor | None = None) -> list[str]: ...

    def score_options(self, batch: Batch, options: list[str]) -> Tensor: ...


def token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed negative log-likelihood of the labelled tokens, per example.

    Args:
        logits: [b, n, V] scores; position i predicts labels[:, i].
        labels: [b, n] target ids, -100 = ignore.

    Returns:
        (nll_sum [b], n_tokens [b]) in float32.
    """
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [b, n]
    return -(picked * mask).sum(-1), mask.sum(-1).float()


def reduce_nll(nll: Tensor, count: Tensor, reduction: str) -> Tensor:
    """Token-mean over the batch ("mean", scalar) or per-example token mean ("none", [b])."""
    if reduction == "mean":
        return nll.sum() / count.sum().clamp(min=1)
    if reduction == "none":
        return nll / count.clamp(min=1)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


class BackboneBase:
    """Shared state and helpers; `CausalBackbone` and `Seq2SeqBackbone` add the kind-specific layout.

    Args:
        config: the backbone config.
        model: a loaded HF model; it is frozen here (requires_grad False, eval mode).
        tokenizer: its tokenizer.
    """

    def __init__(self, config: BackboneConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.hidden_size: int = model.get_input_embeddings().embedding_dim
        self.eos_id: int | None = _first_id(tokenizer.eos_token_id, model.config.eos_token_id)
        self.pad_id: int = _first_id(tokenizer.pad_token_id, model.config.pad_token_id, self.eos_id, 0)
        self._norm: float | None = None

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embedding_norm(self) -> float:
        """Mean L2 norm of the token embeddings that the model's input actually receives (cached).

        Soft tokens go into `inputs_embeds`, so they should have the norm of
        ``model.get_input_embeddings()(ids)``. We measure that module's *output* over the whole
        vocabulary rather than the raw weight table: for most models (Llama, T5) they are equal,
        while in transformers 5 Gemma's scaled embedding module multiplies by sqrt(d) inside the
        module, so inputs_embeds are NOT rescaled by the model and the output norm is the right target.

        Returns:
            the mean row norm (a float).
        """
        if self._norm is None:
            emb = self.model.get_input_embeddings()
            vocab = emb.weight.shape[0]
            total = 0.0
            with torch.no_grad():
                for start in range(0, vocab, 8192):
                    ids = torch.arange(start, min(start + 8192, vocab), device=self.device)
                    total += emb(ids).float().norm(dim=-1).sum().item()
            self._norm = total / vocab
        return self._norm

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _target_ids(self, target: str, eos: bool = True) -> list[int]:
        """Target ids + EOS, capped at max_target_tokens (a cut target gets no EOS: it did not end there)."""
        ids = self._ids(target)
        if eos and self.eos_id is not None and len(ids) < self.config.max_target_tokens:
            return ids + [self.eos_id]
        return ids[: self.config.max_target_tokens]

    def _embed(self, ids: list[int] | Tensor) -> Tensor:
        """[n] ids -> [n, d] input embeddings (no grad to the frozen table)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids)

    def _splice(self, parts: list[PromptParts], soft: Tensor | None, soft_mask: Tensor | None,
                before: list[int], after: list[int],
                soft_after: bool = False) -> list[tuple[Tensor, list[int], list[int], int]]:
        """Per example: ``[before][prefix][kept soft][text][after]`` as embeddings, ids and soft slots
        (``soft_after``: ``[before][prefix][text][kept soft][after]``).

        Masked-out soft tokens are dropped rather than kept with attention 0, so a masked-out soft
        token gives exactly the input of no soft token for every position scheme (rotary, learned,
        T5 relative buckets). An over-long prompt is cut to fit `max_prompt_tokens` as `_fit` says: the
        end of the body first, so the instruction and label list at the start of the input stay.

        Args:
            parts: b prompts.
            soft: [b, k, d] soft tokens or None.
            soft_mask: [b, k] bool, False = drop that soft token; None = keep all.
            before: scaffold ids before the prefix (chat-template head, BOS).
            after: scaffold ids after the text (chat-template tail, EOS).
            soft_after: place the soft tokens after the text (the text then does not depend on them).

        Returns:
            b tuples (embeds [n_i, d], ids [n_i] with pad at soft slots, soft slot indices [k]: -1 = dropped,
            cut = the index of the first (possibly dropped) soft slot: ids[:cut] never see a soft token).
        """
        b = len(parts)
        k = 0 if soft is None else soft.shape[1]
        if soft is not None:
            if soft.dim() != 3 or soft.shape[0] != b or soft.shape[2] != self.hidden_size:
                raise ValueError(f"soft must be [b={b}, k, d={self.hidden_size}], got {list(soft.shape)}")
            soft = soft.to(device=self.device, dtype=self.dtype)
        if soft_mask is not None:
            if soft is None or soft_mask.shape != soft.shape[:2]:
                raise ValueError("soft_mask must be [b, k] matching soft")
            soft_mask = soft_mask.to(device=self.device, dtype=torch.bool)
        out = []
        for i, part in enumerate(parts):
            keep = list(range(k)) if soft_mask is None else soft_mask[i].nonzero().flatten().tolist()
            room = max(self.config.max_prompt_tokens - len(before) - len(after) - len(keep), 0)
            prefix, text = self._ids(part.prefix), self._ids(part.text)
            if len(prefix) + len(text) > room and part.body_start > 0:  # split only when a cut is needed
                text = self._ids(part.text[: part.body_start])
                prefix, text = _fit(prefix, text, self._ids(part.text[part.body_start:]), room)
            else:
                prefix, text = _fit(prefix, [], text, room)
            head, tail = (before + prefix + text, after) if soft_after else (before + prefix, text + after)
            ids = head + [self.pad_id] * len(keep) + tail
            emb = self._embed(ids)
            if keep:
                emb = torch.cat([emb[: len(head)], soft[i, keep], emb[len(head) + len(keep):]])
            slots = [-1] * k
            for j, s in enumerate(keep):
                slots[s] = len(head) + j
            out.append((emb, ids, slots, len(head)))
        return out

    def _special_wrap(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before / after a text by itself (e.g. BOS; T5's EOS)."""
        probe = "the"
        plain = self._ids(probe)
        full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(plain) + 1):
            if full[i: i + len(plain)] == plain:
                return full[:i], full[i + len(plain):]
        return [], []

    def _pad_rows(self, rows: list[tuple[Tensor, list[int]]],
                  left: bool) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Pad (embeds [n_i, d], ids [n_i]) rows to one length with the pad token's embedding.

        Returns:
            (inputs_embeds [b, t, d], input_ids [b, t], attention_mask [b, t], pad counts per row)
        """
        t = max(len(ids) for _, ids in rows)
        pad_emb = self._embed([self.pad_id])  # [1, d]
        embs, all_ids, masks, pads = [], [], [], []
        for emb, ids in rows:
            n_pad = t - len(ids)
            filler = pad_emb.expand(n_pad, -1)
            embs.append(torch.cat([filler, emb] if left else [emb, filler]))
            fill_ids, ones = [self.pad_id] * n_pad, [1] * len(ids)
            all_ids.append(fill_ids + ids if left else ids + fill_ids)
            masks.append([0] * n_pad + ones if left else ones + [0] * n_pad)
            pads.append(n_pad)
        as_long = dict(dtype=torch.long, device=self.device)
        return torch.stack(embs), torch.tensor(all_ids, **as_long), torch.tensor(masks, **as_long), pads

    def _decode(self, ids: Tensor) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _option_ids(self, options: list[str], b: int) -> tuple[Tensor, Tensor]:
        """Options as outputs (+ EOS) tiled per example: ids [b * n, L] (pad-filled), labels (-100 at pad)."""
        if not options:
            raise ValueError("score_options needs at least one option")
        opts = [self._target_ids(o) for o in options]
        length = max(len(o) for o in opts)
        ids = torch.full((len(opts), length), self.pad_id, dtype=torch.long, device=self.device)
        labels = torch.full_like(ids, -100)
        for j, o in enumerate(opts):
            ids[j, : len(o)] = torch.tensor(o)
            labels[j, : len(o)] = torch.tensor(o)
        return ids.repeat(b, 1), labels.repeat(b, 1)  # row i * n + j = example i, option j


def _fit(prefix: list[int], head: list[int], body: list[int], room: int) -> tuple[list[int], list[int]]:
    """Cut ``[prefix][head][body]`` to ``room`` tokens; returns (prefix, head + body).

    The prefix keeps at least half the room (all it needs when the text is short); the text gets the rest,
    cut at the end of the body first (LaMP's official code truncates inputs on the right), and only when
    the body is gone, at the start of the head (retrieved examples go before the instruction).
    """
    text_len = len(head) + len(body)
    if len(prefix) + text_len <= room:
        return prefix, head + body
    keep_prefix = min(len(prefix), max(room // 2, room - text_len))
    text_room = room - keep_prefix
    keep_body = min(len(body), max(text_room - len(head), 0))
    keep_head = text_room - keep_body
    return prefix[:keep_prefix], head[len(head) - keep_head:] + body[:keep_body]


def _first_id(*candidates: int | list[int] | None) -> int | None:
    """The first non-None id (the first element of a list of ids)."""
    for c in candidates:
        if isinstance(c, list | tuple):
            c = c[0] if c else None
        if c is not None:
            return int(c)
    return None


def no_labels(batch: Batch) -> None:
    """Generation and option scoring need a prompt-only batch (built without targets)."""
    if batch.labels is not None:
        raise ValueError("build the batch without targets for generate/score_options")
