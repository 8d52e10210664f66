"""Encoder-decoder backbone: soft tokens go into the encoder input; targets are decoder labels."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from pplug.backbones.base import BackboneBase, Batch, PromptParts, no_labels, reduce_nll, token_nll
from pplug.cancel import stopping_criteria


class Seq2SeqBackbone(BackboneBase):
    """A frozen encoder-decoder LLM (T5 family).

    Encoder row: ``[prefix][soft][text][EOS]`` right padded (the encoder is bidirectional, so the
    side does not matter). Decoder labels: target ids + EOS, padding -> -100; the decoder input is
    the labels shifted right behind the decoder start token.
    """

    def __init__(self, config, model, tokenizer):
        super().__init__(config, model, tokenizer)
        lead, trail = self._special_wrap()
        if not trail and self.eos_id is not None:
            trail = [self.eos_id]
        self._head, self._tail = lead, trail

    def build(self, parts: list[PromptParts], soft: Tensor | None = None, soft_mask: Tensor | None = None,
              targets: list[str] | None = None, soft_after_text: bool = False) -> Batch:
        """Tokenize, splice soft tokens after the prefix in the encoder input, make decoder labels.

        ``soft_after_text`` moves the soft tokens behind the text (``[prefix][text][soft][EOS]``). Nothing is
        reused: the encoder is bidirectional, so every encoder state depends on the soft tokens.

        Args:
            parts: b prompts.
            soft: [b, k, d] soft tokens (k may be 0) or None; gradients flow back to it.
            soft_mask: [b, k] bool, False = that soft token is left out (same result as not passing it).
            targets: b gold outputs -> labels [b, t_out] (tokens + EOS, padding -100).

        Returns:
            a Batch with inputs_embeds [b, t, d], attention_mask/input_ids [b, t], labels or None,
            position_ids None, soft_positions [b, k].
        """
        if targets is not None and len(targets) != len(parts):
            raise ValueError(f"{len(parts)} prompts but {len(targets)} targets")
        spliced = self._splice(parts, soft, soft_mask, self._head, self._tail, soft_after_text)
        embeds, input_ids, mask, _ = self._pad_rows([(emb, ids) for emb, ids, _, _ in spliced], left=False)
        labels = None
        if targets is not None:
            tgts = [self._target_ids(t) for t in targets]
            length = max(1, max(len(t) for t in tgts))
            labels = torch.tensor([t + [-100] * (length - len(t)) for t in tgts], dtype=torch.long,
                                  device=self.device)
        soft_pos = torch.tensor([slot for _, _, slot, _ in spliced], dtype=torch.long,
                                device=self.device).reshape(len(parts), -1)
        return Batch(inputs_embeds=embeds, attention_mask=mask, labels=labels, position_ids=None,
                     input_ids=input_ids, soft_positions=soft_pos)

    def _logits(self, encoder_hidden: Tensor | None, batch_embeds: Tensor | None, mask: Tensor,
                labels: Tensor) -> Tensor:
        """Decoder logits [b, t_out, V] for teacher-forced labels (shifted right internally)."""
        decoder_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        enc = None if encoder_hidden is None else BaseModelOutput(last_hidden_state=encoder_hidden)
        out = self.model(inputs_embeds=batch_embeds, encoder_outputs=enc, attention_mask=mask,
                         decoder_input_ids=decoder_ids, use_cache=False)
        return out.logits

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
        logits = self._logits(None, batch.inputs_embeds, batch.attention_mask, batch.labels)
        nll, count = token_nll(logits, batch.labels)
        return reduce_nll(nll, count, reduction)

    def generate(self, batch: Batch, max_new_tokens: int = 32, num_beams: int = 1,
                 logits_processor: LogitsProcessor | None = None) -> list[str]:
        """Deterministic decoding (greedy or beam search) from the encoder input embeddings.

        Args:
            batch: built without targets.
            max_new_tokens: cap on generated tokens.
            num_beams: 1 = greedy.
            logits_processor: HF-style ``(generated ids, scores) -> scores`` applied at every step.

        Returns:
            b decoded outputs (decoder start token removed, special tokens skipped, stripped).
        """
        no_labels(batch)
        out = self.model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                  max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  stopping_criteria=stopping_criteria(),
                                  logits_processor=LogitsProcessorList([logits_processor] if logits_processor else []))
        return self._decode(out[:, 1:])  # transformers 5 keeps the decoder start token in front

    def score_options(self, batch: Batch, options: list[str]) -> Tensor:
        """Total log-likelihood of each option (+ EOS) as the whole output; the encoder runs once.

        Args:
            batch: built without targets.
            options: n candidate outputs.

        Returns:
            [b, n] float32 log-likelihoods (higher = more likely); differentiable w.r.t. the soft
            tokens, so wrap inference calls in ``torch.no_grad()``.
        """
        no_labels(batch)
        b, n = len(batch), len(options)
        hidden = self.model.get_encoder()(inputs_embeds=batch.inputs_embeds,
                                          attention_mask=batch.attention_mask).last_hidden_state  # [b, t, d]
        _, labels = self._option_ids(options, b)  # [b * n, L]
        mask = batch.attention_mask.repeat_interleave(n, 0)
        logits = self._logits(hidden.repeat_interleave(n, 0), None, mask, labels)
        nll, _ = token_nll(logits, labels)
        return -nll.view(b, n)
