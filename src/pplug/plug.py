"""The persona plug: input-aware aggregation of a user's history into soft tokens for a frozen LLM.

    e_i  = Enc_hist(item_i)                  frozen, cached, L2-normalized        [b, n, d_enc]
    q    = Enc_input(query(x))               trainable or frozen copy              [b, d_enc]
    w_i  = softmax_i(q . e_i / tau)          masked over padding; tau learnable   [b, n]
    P_u  = sum_i w_i Proj(e_i)               Proj: d_enc -> d_lm -> k*d_lm (GELU)  [b, k, d_lm]
    (center_persona: P_u - mean persona over training users, a running mean; off by default)
    I    = Proj_I(I0)                        task instruction token               [1, d_lm]
    soft = [I; P_u], each token rescaled to the backbone's mean token-embedding norm (x learnable gain)

The LLM input is ``[prefix text; I; P_u; Emb(x)]`` (see pplug.backbones), or with
``placement="after_text"`` ``[prefix text; Emb(x); I; P_u]``. The aggregator weights
``w`` are returned as the explanation of which past items shaped the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ABLATIONS = ("none", "no_instruction", "mean_pool", "no_persona", "top_k")
PLACEMENTS = ("before_text", "after_text")


@dataclass
class PlugConfig:
    n_persona_tokens: int = 4  # k: persona soft tokens per user (paper: 1; 4 were needed on a 135M backbone)
    ablation: str = "none"  # none | no_instruction | mean_pool | no_persona | top_k
    top_k: int = 4  # items kept by the top_k ablation (highest q . e_i)
    temperature: float = 0.05  # initial softmax temperature on q . e_i (cosines are nearly flat under softmax)
    learn_temperature: bool = True  # make the temperature a trained parameter (log-parametrized)
    normalize_soft: bool = True  # rescale each soft token to the backbone's mean token-embedding norm
    learn_gain: bool = True  # a learnable scalar gain on that norm (per soft-token slot)
    gain_init: float = 1.0  # initial gain: soft-token norm = gain * mean token norm (the learned gain barely moves)
    train_input_encoder: bool | None = None  # fine-tune the input encoder (paper) or keep it frozen; None = per
    # task kind (pplug/kind_defaults.py: frozen for label tasks, trained for generation)
    max_history: int = 64  # items entering the aggregator: the most recent by date (file order if undated); 0 = all
    placement: str | None = None  # soft tokens before_text ([I; P_u; x], paper) or after_text ([x; I; P_u]:
    # decoder-only backbones then reuse the text's KV cache, computed once without grad; see docs/speed.md);
    # None = per task kind (pplug/kind_defaults.py: after_text for label tasks, before_text for generation)
    center_persona: bool = False  # subtract the average user's persona (a running mean over training batches)
    # before scaling: the persona tokens then carry only how this user differs from the average user (the
    # instruction token carries what all users share); an answer to personas that collapse to one vector
    center_momentum: float = 0.05  # update rate of that running mean (the first training batch sets it)
    backbone_lora: bool = False  # beyond the paper: also train ONE LoRA inside the backbone, shared by every user,
    # jointly with the plug (rank/alpha/dropout/q,k,v targets from `lora`, i.e. task-lora's adapter; saved with the
    # plug's weights). The LLM is then no longer frozen, but one model still serves every user and a user's state
    # is still her persona only. Needs placement=before_text (after_text reuses the text's KV computed without grad)
    # Off by default: README "One shared LoRA inside the backbone" (scholarly_title .310 -> .361, no persona use)
    dtype: str = "float32"  # compute dtype (torch.autocast) of the plug and a trained input encoder: float32 |
    # bfloat16; their weights stay float32 (see pplug.devices, docs/devices.md)

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got '{self.ablation}'")
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ValueError(f"plug.placement must be one of {PLACEMENTS}, got '{self.placement}'")
        if self.n_persona_tokens < 1:
            raise ValueError("n_persona_tokens must be >= 1")

    @property
    def use_instruction(self) -> bool:
        return self.ablation != "no_instruction"

    @property
    def use_persona(self) -> bool:
        return self.ablation != "no_persona"

    @property
    def n_soft(self) -> int:
        """Soft tokens per example: instruction (0/1) + persona (0/k)."""
        return int(self.use_instruction) + (self.n_persona_tokens if self.use_persona else 0)


def mlp(d_in: int, d_out: int, k: int = 1) -> nn.Sequential:
    """The 2-layer GELU projector ``d_in -> d_out -> k*d_out``."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, k * d_out))


@dataclass
class PlugOutput:
    soft: torch.Tensor  # [b, n_soft, d_lm] soft tokens in order [I; P_u]
    soft_mask: torch.Tensor  # [b, n_soft] bool; persona tokens masked out for users with no history
    weights: torch.Tensor | None  # [b, n] aggregator weights (None under no_persona)


class PersonaPlug(nn.Module):
    """The trainable user embedder (aggregator + projectors + instruction embedding).

    Args:
        config: plug options.
        d_enc: encoder embedding size.
        d_lm: backbone input-embedding size.
        target_norm: the backbone's mean token-embedding L2 norm (soft tokens are scaled to it).
    """

    def __init__(self, config: PlugConfig, d_enc: int, d_lm: int, target_norm: float):
        super().__init__()
        self.config, self.d_lm = config, d_lm
        k = config.n_persona_tokens
        self.register_buffer("target_norm", torch.tensor(float(target_norm)))
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.temperature)),
                                    requires_grad=config.learn_temperature)
        self.proj = mlp(d_enc, d_lm, k) if config.use_persona else None
        self.instruction = nn.Parameter(torch.randn(d_enc) / math.sqrt(d_enc)) if config.use_instruction else None
        self.proj_instruction = mlp(d_enc, d_lm) if config.use_instruction else None
        self.gain = nn.Parameter(torch.full((config.n_soft,), float(config.gain_init)), requires_grad=config.learn_gain)
        if config.center_persona and config.use_persona:  # saved with the weights (a buffer)
            self.register_buffer("persona_mean", torch.zeros(k, d_lm))
            self.register_buffer("persona_mean_set", torch.tensor(False))

    def _center(self, persona: torch.Tensor, has_items: torch.Tensor) -> torch.Tensor:
        """[b, k, d] personas minus the running mean persona (updated from this batch while training)."""
        if self.training and bool(has_items.any()):
            batch_mean = persona.detach()[has_items].float().mean(dim=0)  # [k, d]
            if bool(self.persona_mean_set):
                self.persona_mean.lerp_(batch_mean, self.config.center_momentum)
            else:
                self.persona_mean.copy_(batch_mean)
                self.persona_mean_set.fill_(True)
        centered = persona - self.persona_mean.to(persona.dtype)
        return torch.where(has_items.view(-1, 1, 1), centered, persona)

    def aggregate_weights(self, query: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Input-aware weights over the history.

        Args:
            query: [b, d_enc] input embeddings.
            hist: [b, n, d_enc] history item embeddings.
            mask: [b, n] bool, True for real items.

        Returns:
            [b, n] weights summing to 1 over real items (all zero for a user with no items).
        """
        scores = torch.einsum("bd,bnd->bn", query, hist) / self.log_tau.exp()  # [b, n]
        if self.config.ablation == "mean_pool":
            scores = torch.zeros_like(scores)
        if self.config.ablation == "top_k":
            kth = scores.masked_fill(~mask, float("-inf")).topk(min(self.config.top_k, scores.shape[1]), dim=1)
            keep = torch.zeros_like(mask).scatter(1, kth.indices, True)
            mask = mask & keep
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)
        return torch.nan_to_num(weights, nan=0.0) * mask  # rows with no items -> 0

    def _scale(self, tokens: torch.Tensor) -> torch.Tensor:
        """[b, s, d] -> tokens with norm target_norm * gain (or just gain-scaled when not normalizing)."""
        gain = self.gain.view(1, -1, 1)
        if not self.config.normalize_soft:
            return tokens * gain
        return tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6) * self.target_norm * gain

    def forward(self, query: torch.Tensor | None, hist: torch.Tensor, mask: torch.Tensor) -> PlugOutput:
        """Soft tokens for a batch.

        Args:
            query: [b, d_enc] input embeddings (unused under no_persona / mean_pool).
            hist: [b, n, d_enc] history embeddings (n may be 0).
            mask: [b, n] bool.

        Returns:
            PlugOutput with soft [b, n_soft, d_lm], soft_mask [b, n_soft], weights [b, n].
        """
        b = hist.shape[0]
        parts, masks, weights = [], [], None
        if self.instruction is not None:
            inst = self.proj_instruction(self.instruction).view(1, 1, -1).expand(b, 1, self.d_lm)
            parts.append(inst)
            masks.append(torch.ones(b, 1, dtype=torch.bool, device=hist.device))
        if self.proj is not None:
            k = self.config.n_persona_tokens
            if hist.shape[1] == 0:
                weights = hist.new_zeros(b, 0)
                persona = hist.new_zeros(b, k, self.d_lm)
            else:
                q = query if query is not None else hist.new_zeros(b, hist.shape[-1])
                weights = self.aggregate_weights(q, hist, mask)  # [b, n]
                projected = self.proj(hist).view(b, hist.shape[1], k, self.d_lm)  # [b, n, k, d_lm]
                persona = torch.einsum("bn,bnkd->bkd", weights, projected)  # [b, k, d_lm]
            has_items = mask.any(dim=1) if mask.numel() else torch.zeros(b, dtype=torch.bool, device=hist.device)
            if self.config.center_persona:
                persona = self._center(persona, has_items)
            parts.append(persona)
            masks.append(has_items.view(b, 1).expand(b, k))
        soft = self._scale(torch.cat(parts, dim=1))
        return PlugOutput(soft=soft, soft_mask=torch.cat(masks, dim=1), weights=weights)
