"""Decoder-only backbone: chat-template scaffold, left padding, loss on the target tokens only."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from pplug.backbones.base import BackboneBase, Batch, PromptParts, no_labels, reduce_nll, token_nll
from pplug.backbones.kv_reuse import (
    FrozenRows,
    SharedPrefixes,
    common_prefix,
    frozen_cache,
    greedy_decode,
    packed_option_scores,
)
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

    With ``soft_after_text`` the soft tokens follow the text and the frozen text is reused as a KV
    cache (see `pplug.backbones.kv_reuse` for that layout).
    """

    def __init__(self, config, model, tokenizer):
        super().__init__(config, model, tokenizer)
        self._head, self._tail = self._scaffold()
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.shared_prefixes = SharedPrefixes()
        self.frozen_rows = FrozenRows()  # per-question frozen KV memo; PPlugMethod.fit turns it on while training
        self.packed_options = True  # score_options: all options in one row (False: one row per option, as before)

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
              targets: list[str] | None = None, soft_after_text: bool = False) -> Batch:
        """Tokenize, splice soft tokens after the prefix, append targets, left pad.

        Args:
            parts: b prompts.
            soft: [b, k, d] soft tokens (k may be 0) or None; gradients flow back to it.
            soft_mask: [b, k] bool, False = that soft token is left out (same result as not passing it).
            targets: b gold outputs; the labels cover their tokens + EOS only.
            soft_after_text: ``[head][prefix][text][soft][tail][target]`` in the segmented layout whose
                ``frozen_len`` leading columns are computed once without grad (loss, scoring, greedy decoding).

        Returns:
            a Batch with inputs_embeds [b, t, d], attention_mask/position_ids/input_ids [b, t],
            labels [b, t] or None, soft_positions [b, k].
        """
        if targets is not None and len(targets) != len(parts):
            raise ValueError(f"{len(parts)} prompts but {len(targets)} targets")
        rows, labels, slots, cuts = [], [], [], []
        spliced = self._splice(parts, soft, soft_mask, self._head, self._tail, soft_after_text)
        for i, (emb, ids, slot, cut) in enumerate(spliced):
            lab = [-100] * len(ids)
            if targets is not None:
                tgt = self._target_ids(targets[i])
                emb, ids, lab = torch.cat([emb, self._embed(tgt)]), ids + tgt, lab + tgt
            rows.append((emb, ids))
            labels.append(lab)
            slots.append(slot)
            cuts.append(cut)
        if soft_after_text:
            return self._segmented(rows, labels if targets is not None else None, slots, cuts)
        embeds, input_ids, mask, pads = self._pad_rows(rows, left=True)
        label_t = None
        if targets is not None:
            label_t = torch.tensor([[-100] * p + lab for p, lab in zip(pads, labels, strict=True)],
                                   dtype=torch.long, device=self.device)
        shifted = [[s + p if s >= 0 else -1 for s in slot] for p, slot in zip(pads, slots, strict=True)]
        soft_pos = torch.tensor(shifted, dtype=torch.long, device=self.device).reshape(len(parts), -1)
        return Batch(inputs_embeds=embeds, attention_mask=mask, labels=label_t, position_ids=positions(mask),
                     input_ids=input_ids, soft_positions=soft_pos)

    def _segmented(self, rows: list[tuple[Tensor, list[int]]], labels: list[list[int]] | None,
                   slots: list[list[int]], cuts: list[int]) -> Batch:
        """``[shared][pad][rest of ids[:cut]][pad][ids[cut:]]`` per row (see `pplug.backbones.kv_reuse`)."""
        shared = common_prefix([ids[:cut] for (_, ids), cut in zip(rows, cuts, strict=True)])
        ta = max(cut - shared for cut in cuts)
        tb = max(len(ids) - cut for (_, ids), cut in zip(rows, cuts, strict=True))
        pad_emb = self._embed([self.pad_id])  # [1, d]
        embs, all_ids, masks, labs, shifted = [], [], [], [], []
        for i, ((emb, ids), cut) in enumerate(zip(rows, cuts, strict=True)):
            pa, pb = ta - (cut - shared), tb - (len(ids) - cut)
            embs.append(torch.cat([emb[:shared], pad_emb.expand(pa, -1), emb[shared:cut], pad_emb.expand(pb, -1),
                                   emb[cut:]]))
            all_ids.append(ids[:shared] + [self.pad_id] * pa + ids[shared:cut] + [self.pad_id] * pb + ids[cut:])
            masks.append([1] * shared + [0] * pa + [1] * (cut - shared) + [0] * pb + [1] * (len(ids) - cut))
            if labels is not None:
                labs.append([-100] * (shared + ta + pb) + labels[i][cut:])
            shifted.append([s + pa + pb if s >= 0 else -1 for s in slots[i]])
        as_long = dict(dtype=torch.long, device=self.device)
        mask = torch.tensor(masks, **as_long)
        return Batch(inputs_embeds=torch.stack(embs), attention_mask=mask,
                     labels=torch.tensor(labs, **as_long) if labels is not None else None,
                     position_ids=positions(mask), input_ids=torch.tensor(all_ids, **as_long),
                     soft_positions=torch.tensor(shifted, **as_long).reshape(len(rows), -1),
                     frozen_len=shared + ta, shared_len=shared)

    def _frozen(self, batch: Batch) -> tuple[object, Tensor]:
        return frozen_cache(self.model, batch, self.shared_prefixes, self._keep_arg, self.frozen_rows)

    def _prompt(self, batch: Batch) -> tuple[object, Tensor]:
        """Run a prompt-only batch once: (its KV cache, logits at its last column [b, 1, V])."""
        f, keep1 = batch.frozen_len, ({"logits_to_keep": 1} if self._keep_arg else {})
        cache, last = self._frozen(batch) if f else (None, None)
        if f < batch.inputs_embeds.shape[1]:
            out = self.model(inputs_embeds=batch.inputs_embeds[:, f:], attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids[:, f:], past_key_values=cache, use_cache=True, **keep1)
            cache, last = out.past_key_values, out.logits[:, -1:]
        return cache, last

    def _frozen_loss(self, batch: Batch, reduction: str) -> Tensor:
        """The loss with the frozen columns from a no-grad KV cache; only the rest runs with grad."""
        f = batch.frozen_len
        cache, last = self._frozen(batch)
        lab = batch.labels[:, f:]  # [b, tb]
        tb = lab.shape[1]
        has = (lab != -100).any(0).nonzero()
        first = int(has[0]) if len(has) else tb - 1
        keep = tb - first + 1 if first >= 1 else tb
        out = self.model(inputs_embeds=batch.inputs_embeds[:, f:], attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids[:, f:], past_key_values=cache, use_cache=True,
                         **({"logits_to_keep": keep} if self._keep_arg else {}))
        logits = out.logits[:, -keep:]
        if first == 0:
            logits = torch.cat([last, logits], dim=1)  # the last frozen column predicts the first label
        nll, count = token_nll(logits[:, :-1], lab[:, first:])
        return reduce_nll(nll, count, reduction)

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
        if batch.frozen_len:
            return self._frozen_loss(batch, reduction)
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

    def generate(self, batch: Batch, max_new_tokens: int = 32, num_beams: int = 1,
                 logits_processor: LogitsProcessor | None = None) -> list[str]:
        """Deterministic decoding (greedy or beam search) from the spliced prompt embeddings.

        Args:
            batch: built without targets.
            max_new_tokens: cap on generated tokens.
            num_beams: 1 = greedy.
            logits_processor: HF-style ``(generated ids [b, n], scores [b, V]) -> scores`` applied at every step
                (e.g. `pplug.vocab_prior.VocabBias`).

        Returns:
            b decoded continuations (new tokens only, special tokens skipped, stripped).
        """
        no_labels(batch)
        if batch.frozen_len and num_beams == 1 and len(batch) > 1:  # one row: HF's loop is as fast (measured)
            cache, last = self._prompt(batch)
            gen = self.model.generation_config
            eos = gen.eos_token_id if gen.eos_token_id is not None else self.eos_id
            eos = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
            pad = gen.pad_token_id if gen.pad_token_id is not None else self.pad_id
            return self._decode(greedy_decode(self.model, self._embed, cache, last, batch.attention_mask,
                                              batch.position_ids[:, -1:], max_new_tokens, eos, pad,
                                              logits_processor))
        # transformers 5 returns only the new tokens when generating from inputs_embeds alone, and
        # derives position ids from the attention mask (cumsum - 1) exactly as `positions` does.
        out = self.model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                  max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  stopping_criteria=stopping_criteria(),
                                  logits_processor=LogitsProcessorList([logits_processor] if logits_processor else []))
        return self._decode(out)

    def score_options(self, batch: Batch, options: list[str]) -> Tensor:
        """Total log-likelihood of each option (+ EOS) as the whole output; the prompt runs once and all
        options follow it packed in one row (see `pplug.backbones.kv_reuse.packed_option_scores`).

        Args:
            batch: built without targets.
            options: n candidate outputs.

        Returns:
            [b, n] float32 log-likelihoods (higher = more likely); differentiable w.r.t. the soft
            tokens, so wrap inference calls in ``torch.no_grad()``.
        """
        no_labels(batch)
        if not options:
            raise ValueError("score_options needs at least one option")
        cache, last = self._prompt(batch)
        if not self.packed_options:
            return self._score_repeated(batch, cache, last, options)
        opts = [self._target_ids(o) for o in options]
        return packed_option_scores(self.model, self._embed, cache, last, batch.attention_mask,
                                    batch.position_ids[:, -1:], opts)


    def _score_repeated(self, batch: Batch, cache, last: Tensor, options: list[str]) -> Tensor:
        """The previous option scoring (kept for before/after timing): the cache repeated per option."""
        b, n = len(batch), len(options)
        cache.batch_repeat_interleave(n)
        ids, labels = self._option_ids(options, b)  # [b * n, L]
        mask = torch.cat([batch.attention_mask.repeat_interleave(n, 0), (labels != -100).long()], dim=1)
        pos = batch.position_ids[:, -1:].repeat_interleave(n, 0) + 1 + torch.arange(ids.shape[1], device=ids.device)
        out = self.model(inputs_embeds=self._embed(ids), attention_mask=mask, position_ids=pos,
                         past_key_values=cache, use_cache=True)
        logits = torch.cat([last.repeat_interleave(n, 0), out.logits[:, :-1]], dim=1)  # [b * n, L, V]
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
