"""Decoder-only backbone: chat-template scaffold, left padding, loss on the target tokens only."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from pplug.backbones.base import BackboneBase, Batch, PromptParts, no_labels, reduce_nll, token_nll
from pplug.cancel import stopping_criteria

PLACEHOLDER = "<<PPLUG_SOFT_TOKENS>>"


class CausalBackbone(BackboneBase):
    """A frozen decoder-only LLM.

    Layout of one row (always left padded, in training and generation alike)::

        [pad..][chat head][prefix][soft][text][chat tail = generation prompt][target][EOS]

    The chat head/tail come from rendering a user turn whose content is a placeholder with
    ``add_generation_prompt=True`` and splitting around it; models without a chat template use the
    tokenizer's own special ids (e.g. BOS) as head and nothing as tail. Position ids are derived
    from the attention mask (cumsum - 1, clamped at 0), so padding never shifts positions.
    """

    def __init__(self, config, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self._head, self._tail = self._scaffold()
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _scaffold(self) -> tuple[list[int], list[int]]:
        if not getattr(self.tokenizer, "chat_template", None):
            return self._special_wrap()[0], []
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": PLACEHOLDER}],
                                                      add_generation_prompt=True, tokenize=False)
        head, sep, tail = rendered.partition(PLACEHOLDER)
        if not sep:
            raise ValueError("the chat template dropped the user content; cannot place soft tokens")
        return self._ids(head), self._ids(tail)

    def build(self, parts: list[PromptParts], soft: Tensor | None = None, soft_mask: Tensor | None = None,
              targets: list[str] | None = None) -> Batch:
        """Tokenize, splice soft tokens after the prefix, append targets, left pad.

        Args:
            parts: b prompts.
            soft: [b, k, d] soft tokens (k may be 0) or None; gradients flow back to it.
            soft_mask: [b, k] bool, False = that soft token is left out (same result as not passing it).
            targets: b gold outputs; the labels cover their tokens + EOS only.

        Returns:
            a Batch with inputs_embeds [b, t, d], attention_mask/position_ids/input_ids [b, t],
            labels [b, t] or None, soft_positions [b, k].
        """
        if targets is not None and len(targets) != len(parts):
            raise ValueError(f"{len(parts)} prompts but {len(targets)} targets")
        rows, labels, slots = [], [], []
        for i, (emb, ids, slot) in enumerate(self._splice(parts, soft, soft_mask, self._head, self._tail)):
            lab = [-100] * len(ids)
            if targets is not None:
                tgt = self._target_ids(targets[i])
                emb, ids, lab = torch.cat([emb, self._embed(tgt)]), ids + tgt, lab + tgt
            rows.append((emb, ids))
            labels.append(lab)
            slots.append(slot)
        embeds, input_ids, mask, pads = self._pad_rows(rows, left=True)
        label_t = None
        if targets is not None:
            label_t = torch.tensor([[-100] * p + lab for p, lab in zip(pads, labels, strict=True)],
                                   dtype=torch.long, device=self.device)
        shifted = [[s + p if s >= 0 else -1 for s in slot] for p, slot in zip(pads, slots, strict=True)]
        soft_pos = torch.tensor(shifted, dtype=torch.long, device=self.device).reshape(len(parts), -1)
        return Batch(inputs_embeds=embeds, attention_mask=mask, labels=label_t, position_ids=positions(mask),
                     input_ids=input_ids, soft_positions=soft_pos)

    def loss(self, batch: Batch, reduction: str = "mean") -> Tensor:
        """Mean NLL of the target tokens (+ EOS).

        Args:
            batch: built with targets.
            reduction: "mean" = token mean over the batch (scalar); "none" = per-example token mean [b].

        Returns:
            scalar or [b] float32 loss, differentiable w.r.t. the soft tokens.
        """
        if batch.labels is None:
            raise ValueError("loss needs a batch built with targets")
        t = batch.labels.shape[1]
        has = (batch.labels != -100).any(0).nonzero()
        first = int(has[0]) if len(has) else t - 1  # first labelled position in any row
        keep = t - first + 1  # logits from position first-1 on predict every label
        extra = {"logits_to_keep": keep} if self._keep_arg else {}
        out = self.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False, **extra)
        logits = out.logits[:, -keep:]  # [b, keep, V]
        nll, count = token_nll(logits[:, :-1], batch.labels[:, t - keep + 1:])
        return reduce_nll(nll, count, reduction)

    def generate(self, batch: Batch, max_new_tokens: int = 32, num_beams: int = 1) -> list[str]:
        """Deterministic decoding (greedy or beam search) from the spliced prompt embeddings.

        Args:
            batch: built without targets.
            max_new_tokens: cap on generated tokens.
            num_beams: 1 = greedy.

        Returns:
            b decoded continuations (new tokens only, special tokens skipped, stripped).
        """
        no_labels(batch)
        # transformers 5 returns only the new tokens when generating from inputs_embeds alone, and
        # derives position ids from the attention mask (cumsum - 1) exactly as `positions` does.
        out = self.model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                  max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  stopping_criteria=stopping_criteria())
        return self._decode(out)

    def score_options(self, batch: Batch, options: list[str]) -> Tensor:
        """Total log-likelihood of each option (+ EOS) as the whole output; the prompt runs once.

        Args:
            batch: built without targets.
            options: n candidate outputs.

        Returns:
            [b, n] float32 log-likelihoods (higher = more likely); differentiable w.r.t. the soft
            tokens, so wrap inference calls in ``torch.no_grad()``.
        """
        no_labels(batch)
        b, n = len(batch), len(options)
        out = self.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=True,
                         **({"logits_to_keep": 1} if self._keep_arg else {}))
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        ids, labels = self._option_ids(options, b)  # [b * n, L]
        mask = torch.cat([batch.attention_mask.repeat_interleave(n, 0), (labels != -100).long()], dim=1)
        start = batch.position_ids[:, -1:].repeat_interleave(n, 0) + 1
        pos = start + torch.arange(ids.shape[1], device=ids.device)  # [b * n, L] continues each prompt
        out2 = self.model(inputs_embeds=self._embed(ids), attention_mask=mask, position_ids=pos,
                          past_key_values=cache, use_cache=True)
        first = out.logits[:, -1:].repeat_interleave(n, 0)  # [b * n, 1, V] predicts each option's first token
        logits = torch.cat([first, out2.logits[:, :-1]], dim=1)  # [b * n, L, V]
        nll, _ = token_nll(logits, labels)
        return -nll.view(b, n)


def positions(mask: Tensor) -> Tensor:
    """Position ids from a (left-padded, possibly gappy) attention mask: cumsum - 1, clamped at 0.

    Args:
        mask: [b, t] 0/1.

    Returns:
        [b, t] long.
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
