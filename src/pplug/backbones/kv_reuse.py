"""Frozen-prefix reuse for decoder-only backbones: the KV cache of the text before the soft tokens.

With the soft tokens placed after the task text (``[chat head; text; soft; chat tail; target]``), no
token of ``[chat head; text]`` attends to a soft token, so its keys and values do not depend on the
trainable plug. They are computed once per batch without gradient; only the soft tokens, the chat
tail and the target run with gradient (training) or are appended to the cache (prediction). The
columns every row shares (chat head + the task's fixed instruction) are computed once per process
with batch 1 and kept in a small LRU (`SharedPrefixes`).

Batch layout (built by ``CausalBackbone.build(..., soft_after_text=True)``)::

    [shared s][pad][rest of the frozen text][pad][soft][tail][target]
     <-------- frozen_len columns -------->

Position ids come from the attention mask (cumsum - 1), so the padding gaps shift nothing.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor
from transformers import DynamicCache

KV = list[tuple[Tensor, Tensor]]  # per layer: keys, values [1, heads, s, head_dim]


class SharedPrefixes:
    """LRU of the KV cache (and last-column logits) of token prefixes computed with batch 1.

    Args:
        size: prefixes kept (one per task prompt in practice).
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[tuple[int, ...], tuple[KV, Tensor]] = OrderedDict()

    def lookup(self, ids: list[int]) -> tuple[int, KV | None, Tensor | None]:
        """The longest stored prefix of ``ids``: (its length, its KV, its last logits [1, 1, V]); (0, None, None)."""
        best: tuple[int, ...] | None = None
        for key in self._items:
            if len(key) <= len(ids) and (best is None or len(key) > len(best)) and list(key) == ids[: len(key)]:
                best = key
        if best is None:
            return 0, None, None
        self._items.move_to_end(best)
        kv, last = self._items[best]
        return len(best), kv, last

    def put(self, ids: list[int], kv: KV, last: Tensor) -> None:
        self._items[tuple(ids)] = (kv, last)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class FrozenRows:
    """LRU of each row's frozen KV after the shared prefix, keyed by (shared length, the row's frozen token ids).

    Training sees every question several times (epochs x augmented copies) and the dev set once per
    epoch; with this memo the frozen text of a question runs once per run. Off (``max_bytes`` 0) unless
    a caller turns it on (``PPlugMethod.fit`` does, for the length of training).
    """

    def __init__(self, max_bytes: int = 0):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple[int, ...], tuple[KV, Tensor]] = OrderedDict()

    def get(self, key: tuple[int, ...]) -> tuple[KV, Tensor] | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: tuple[int, ...], kv: KV, last: Tensor) -> None:
        """kv: per layer ([heads, n, head_dim] keys, values) of the row's frozen columns after the shared ones."""
        if key in self._items or self.max_bytes <= 0:
            return
        self._items[key] = (kv, last)
        self.bytes += _size(kv, last)
        while self.bytes > self.max_bytes and self._items:
            old_kv, old_last = self._items.popitem(last=False)[1]
            self.bytes -= _size(old_kv, old_last)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


def _size(kv: KV, last: Tensor) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv) + last.numel() * 4


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest token prefix shared by every row."""
    if not rows:
        return 0
    n = min(len(r) for r in rows)
    for i in range(n):
        tok = rows[0][i]
        if any(r[i] != tok for r in rows):
            return i
    return n


def frozen_cache(model, batch, shared: SharedPrefixes, keep_arg: bool,
                 rows: FrozenRows | None = None) -> tuple[DynamicCache, Tensor]:
    """KV cache of the batch's first ``frozen_len`` columns, computed without gradient.

    The ``shared_len`` columns common to every row come from ``shared`` (computed with batch 1 on a miss
    and stored when the batch has more than one row); the rest of the frozen columns run batched.

    Args:
        model: the frozen HF causal LM.
        batch: a Batch with frozen_len > 0 (see the module docstring for its layout).
        shared: the backbone's LRU of shared prefixes.
        keep_arg: the model's forward takes ``logits_to_keep``.
        rows: per-row memo of the frozen columns after the shared ones (used when it is on).

    Returns:
        (cache over [b, frozen_len] columns, logits at the last frozen column [b, 1, V]).
    """
    b, f, s = len(batch), batch.frozen_len, batch.shared_len
    e, m, p = batch.inputs_embeds, batch.attention_mask, batch.position_ids
    one = {"logits_to_keep": 1} if keep_arg else {}
    with torch.no_grad():
        ids = batch.input_ids[0, :s].tolist()
        done, kv, last = shared.lookup(ids)
        if s > 0 and done < s and (b > 1 or done == 0):  # b == 1 with a hit: its own text runs below
            cache = DynamicCache(ddp_cache_data=kv, config=model.config) if kv else DynamicCache(config=model.config)
            out = model(inputs_embeds=e[:1, done:s], attention_mask=m[:1, :s], position_ids=p[:1, done:s],
                        past_key_values=cache, use_cache=True, **one)
            kv = [(k, v) for k, v, *_ in out.past_key_values]
            done, last = s, out.logits[:, -1:]
            if b > 1:
                shared.put(ids, kv, last)
        if rows is not None and rows.max_bytes > 0 and done == s and f > s:
            return _memo_cache(model, batch, kv, rows, one)
        data = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv] if kv else None
        cache = DynamicCache(ddp_cache_data=data, config=model.config)
        if done < f:
            out = model(inputs_embeds=e[:, done:f], attention_mask=m[:, :f], position_ids=p[:, done:f],
                        past_key_values=cache, use_cache=True, **one)
            last = out.logits[:, -1:]
        else:
            last = last.expand(b, -1, -1)
    return cache, last


def _memo_cache(model, batch, shared_kv: KV | None, rows: FrozenRows, one: dict) -> tuple[DynamicCache, Tensor]:
    """The frozen cache assembled from per-row memo entries; rows not memoized yet run batched first."""
    b, f, s = len(batch), batch.frozen_len, batch.shared_len
    e, m, p = batch.inputs_embeds, batch.attention_mask, batch.position_ids
    # the entry holds the columns after the shared ones, so the key includes how many were shared
    keys = [(s, *batch.input_ids[i, :f][m[i, :f].bool()].tolist()) for i in range(b)]
    got = [rows.get(k) for k in keys]
    miss = [i for i in range(b) if got[i] is None]
    if miss:
        data = [(k.expand(len(miss), -1, -1, -1), v.expand(len(miss), -1, -1, -1)) for k, v in shared_kv] \
            if shared_kv else None
        cache = DynamicCache(ddp_cache_data=data, config=model.config)
        out = model(inputs_embeds=e[miss, s:f], attention_mask=m[miss, :f], position_ids=p[miss, s:f],
                    past_key_values=cache, use_cache=True, **one)
        layers = [(k, v) for k, v, *_ in out.past_key_values]  # [len(miss), heads, f, head_dim]
        for j, i in enumerate(miss):
            n = int(m[i, s:f].sum())
            kv = [(k[j, :, f - n:].clone(), v[j, :, f - n:].clone()) for k, v in layers]
            got[i] = (kv, out.logits[j, -1].clone())
            rows.put(keys[i], *got[i])
    ref_k, ref_v = got[0][0][0]
    data = []
    for layer in range(len(got[0][0])):
        k_all = ref_k.new_zeros(b, ref_k.shape[0], f, ref_k.shape[-1])
        v_all = ref_v.new_zeros(b, ref_v.shape[0], f, ref_v.shape[-1])
        if shared_kv:
            k_all[:, :, :s], v_all[:, :, :s] = shared_kv[layer][0], shared_kv[layer][1]
        for i in range(b):
            k, v = got[i][0][layer]
            k_all[i, :, f - k.shape[1]:], v_all[i, :, f - v.shape[1]:] = k, v  # right-aligned: the gap is masked
        data.append((k_all, v_all))
    last = torch.stack([g[1] for g in got])[:, None]  # [b, 1, V]
    return DynamicCache(ddp_cache_data=data, config=model.config), last


def greedy_decode(model, embed, cache: DynamicCache, last: Tensor, mask: Tensor, position: Tensor,
                  max_new_tokens: int, eos: list[int], pad: int, logits_processor=None) -> Tensor:
    """Greedy decoding that continues a prefilled cache (the same tokens as ``generate(do_sample=False)``).

    Args:
        model: the frozen HF causal LM.
        embed: ids [b, 1] -> input embeddings [b, 1, d].
        cache: the prompt's KV cache (extended in place).
        last: logits at the prompt's last column [b, 1, V].
        mask: the prompt's attention mask [b, t].
        position: the prompt's last position id per row [b, 1].
        max_new_tokens: cap on new tokens.
        eos: ids that end a row; a finished row is filled with ``pad``.
        pad: filler id after EOS.
        logits_processor: optional HF-style ``(generated ids [b, n], scores [b, V]) -> scores``.

    Returns:
        new token ids [b, n <= max_new_tokens].
    """
    b = last.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=last.device)
    eos_t = torch.tensor(eos, dtype=torch.long, device=last.device)
    out = []
    for step in range(max_new_tokens):
        scores = last[:, -1]
        if logits_processor is not None:
            so_far = torch.stack(out, dim=1) if out else torch.zeros(b, 0, dtype=torch.long, device=last.device)
            scores = logits_processor(so_far, scores)
        nxt = scores.argmax(-1).masked_fill(done, pad)  # [b]
        out.append(nxt)
        done |= torch.isin(nxt, eos_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        position = position + 1
        o = model(inputs_embeds=embed(nxt[:, None]), attention_mask=mask, position_ids=position,
                  past_key_values=cache, use_cache=True)
        last = o.logits[:, -1:]
    return torch.stack(out, dim=1) if out else torch.zeros(b, 0, dtype=torch.long, device=last.device)


def packed_option_scores(model, embed, cache, last: Tensor, mask: Tensor, last_pos: Tensor,
                         options: list[list[int]]) -> Tensor:
    """Log-likelihood of every option after each prompt, all options packed in ONE row per prompt.

    Option j's tokens ``o_1..o_L`` (ending in EOS): ``o_1`` is scored from the prompt's last logits; the
    inputs ``o_1..o_{L-1}`` of every option are laid side by side in one row that continues the prompt's
    cache, with a block-diagonal causal mask (each option sees the prompt and its own earlier tokens)
    and positions restarting after the prompt for each option. The prompt cache is never copied per
    option and no padding is computed.

    Args:
        model: the frozen HF causal LM.
        embed: ids [m] -> embeddings [m, d].
        cache: the prompts' KV cache over [b, t] columns (extended in place).
        last: logits at the prompts' last column [b, 1, V].
        mask: the prompts' attention mask [b, t].
        last_pos: each prompt's last position id [b, 1].
        options: n token lists (each >= 1 token).

    Returns:
        [b, n] float32 log-likelihoods.
    """
    b, t = mask.shape
    first = torch.log_softmax(last[:, 0].float(), dim=-1)  # [b, V]
    scores = first[:, [o[0] for o in options]]  # [b, n]
    ids, offset, owner, targets = [], [], [], []
    for j, o in enumerate(options):
        for r in range(len(o) - 1):
            ids.append(o[r])
            offset.append(r)
            owner.append(j)
            targets.append(o[r + 1])
    m = len(ids)
    if m == 0:
        return scores
    dev = mask.device
    owner_t, offset_t = torch.tensor(owner, device=dev), torch.tensor(offset, device=dev)
    own = (owner_t[:, None] == owner_t[None, :]) & (offset_t[None, :] <= offset_t[:, None])  # [m, m]
    allowed = torch.cat([mask.bool()[:, None, :].expand(b, m, t), own[None].expand(b, m, m)], dim=2)  # [b, m, t+m]
    dtype = last.dtype
    bias = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)
    pos = last_pos + 1 + offset_t[None, :]  # [b, m]
    inputs = embed(torch.tensor(ids, device=dev))[None].expand(b, -1, -1)  # [b, m, d]
    out = model(inputs_embeds=inputs, attention_mask=bias[:, None], position_ids=pos, past_key_values=cache,
                use_cache=True)
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # [b, m, V]
    picked = logp.gather(-1, torch.tensor(targets, device=dev)[None, :, None].expand(b, m, 1))[..., 0]  # [b, m]
    return scores.index_add(1, owner_t, picked)
