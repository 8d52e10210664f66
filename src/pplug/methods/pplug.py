"""PPlug: frozen backbone + frozen history encoder + trainable persona plug (and optionally input encoder)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import peft
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pplug.backbones import PromptParts, load_backbone
from pplug.config import ConfigError, RunConfig
from pplug.data.records import HistoryItem, Question, Split
from pplug.devices import autocast, check_dtype, resolve_device
from pplug.encoders import load_encoder
from pplug.errors import PPlugError
from pplug.kind_defaults import resolve_per_kind
from pplug.label_prior import resolve_auto
from pplug.methods.base import Prediction, register_method
from pplug.methods.baselines import decode_outputs
from pplug.methods.lora import attach_lora
from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC
from pplug.plug import PersonaPlug, PlugOutput
from pplug.progress import batches
from pplug.resources import Resources
from pplug.retrieval import most_recent
from pplug.scoring import score_predictions
from pplug.tasks import get_task
from pplug.training import set_seed, train_loop
from pplug.vocab_prior import VocabBackground
from pplug.vocab_prior import resolve_auto as resolve_vocab

WEIGHTS = "model.safetensors"
LORA_PREFIX = "backbone_lora."  # plug.backbone_lora: the shared LoRA's tensors in WEIGHTS (peft state-dict keys)


@dataclass
class Example:
    question: Question
    gold: str
    keep: tuple[int, ...] | None = None  # indices of the (recent) profile items kept by augmentation


def augment(examples: list[Example], n_items: list[int], copies: int, max_drop: float, seed: int) -> list[Example]:
    """History augmentation: each example with > 2 items gets ``copies`` extra copies, each dropping a
    random 1%..max_drop share of its items (at least one item dropped, at least one kept)."""
    rng, out = random.Random(seed), list(examples)
    for ex, n in zip(examples, n_items, strict=True):
        if n <= 2:
            continue
        for _ in range(copies):
            drop = min(n - 1, max(1, round(rng.uniform(0.01, max_drop) * n)))
            out.append(Example(ex.question, ex.gold, tuple(sorted(rng.sample(range(n), n - drop)))))
    return out


def swap_partners(questions: Sequence[Question]) -> list[int | None]:
    """For each question, the index of the next question (cyclically) of another user; None if there is none."""
    n = len(questions)
    return [next(((i + s) % n for s in range(1, n) if questions[(i + s) % n].user_key != q.user_key), None)
            for i, q in enumerate(questions)]


def swapped_profiles(questions: Sequence[Question]) -> list[list[HistoryItem]]:
    """For each question, the profile of the next question (cyclically) that belongs to another user (its own
    when every question is the same user's)."""
    return [questions[j].profile if j is not None else q.profile
            for q, j in zip(questions, swap_partners(questions), strict=True)]


class PPlugMethod:
    """The persona-plug method (``pplug``; ``pplug-rag`` adds the top-1 retrieved item before the soft tokens)."""

    def __init__(self, config: RunConfig, resources: Resources | None = None):
        self.config, self.name = config, config.method
        self.task = get_task(config.task)
        resolve_per_kind(config, self.task.kind)  # plug/train/decode fields left to the task kind
        resources = resources or Resources()
        self.device = resolve_device(config.device)
        check_dtype(self.device, config.plug.dtype, "plug.dtype")  # before any model loads
        if config.plug.backbone_lora and config.plug.placement == "after_text":
            raise ConfigError("plug.backbone_lora=true needs plug.placement=before_text: with after_text the "
                              "text's KV is computed once without gradient, so a LoRA in the backbone would not learn")
        self.lora: peft.PeftModel | None = None  # plug.backbone_lora: the shared LoRA inside the backbone
        if config.plug.backbone_lora:  # our own backbone: peft injects the LoRA in place
            self.backbone = load_backbone(config.backbone, self.device)
            self.lora = attach_lora(self.backbone.model, config.lora, config.train.seed,
                                    config.lora.task_target_modules)
        else:
            self.backbone = resources.backbone(config.backbone, self.device)
        self.history_encoder = resources.encoder(config.encoder, self.device)  # frozen + cached
        set_seed(config.train.seed)
        self.input_encoder = None  # trainable: float32 master weights, computes in plug.dtype (autocast)
        if config.plug.train_input_encoder:
            self.input_encoder = load_encoder(replace(config.encoder, dtype="float32"), self.device)
        self.plug = PersonaPlug(config.plug, self.history_encoder.dim, self.backbone.hidden_size,
                                self.backbone.embedding_norm()).to(self.device)  # float32 master weights
        self.trainable = nn.ModuleDict({"plug": self.plug})
        if self.input_encoder is not None:
            self.trainable["input_encoder"] = self.input_encoder
        self.retriever = None
        if config.method == "pplug-rag":
            from pplug.retrieval import build_retriever

            self.retriever = build_retriever(config.retrieval.retriever, self.task, self.history_encoder)
        self.class_weights: dict[str, float] = {}
        self.vocab: VocabBackground | None = None  # the vocabulary prior's background (generation; fit/load)

    # ---- features -------------------------------------------------------------------------------
    def _items(self, profile: list[HistoryItem], keep: tuple[int, ...] | None = None) -> list[HistoryItem]:
        """The items that enter the aggregator: the ``plug.max_history`` most recent by date (see
        `most_recent`), then those ``keep`` (augmentation) picks among them."""
        items = [profile[i] for i in most_recent(profile, self.config.plug.max_history)]
        return items if keep is None else [items[i] for i in keep]

    def item_vectors(self, items: list[HistoryItem]) -> torch.Tensor:
        """[n, d_enc] frozen embeddings of history items (through the on-disk cache), float32 on CPU."""
        if not items:
            return torch.zeros(0, self.history_encoder.dim)
        return self.history_encoder.encode([self.task.render_item(it) for it in items])

    def encode_profiles(self, profiles: list[list[HistoryItem]]) -> list[torch.Tensor]:
        """Onboard many users at once: one encoder call over all their (capped) items, stored in the cache.

        Returns:
            per user [n_i, d_enc] item vectors (what ``predict(vectors=...)`` takes).
        """
        items = [self._items(p) for p in profiles]
        flat = self.item_vectors([it for p in items for it in p])
        return list(torch.split(flat, [len(p) for p in items]))

    def _history(self, profiles: list[list[HistoryItem]],
                 vectors: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, n, d_enc] history embeddings and their [b, n] mask (``vectors``: precomputed per profile)."""
        n = max((len(p) for p in profiles), default=0)
        hist = torch.zeros(len(profiles), n, self.history_encoder.dim, device=self.device)
        mask = torch.zeros(len(profiles), n, dtype=torch.bool, device=self.device)
        if vectors is None:
            flat = self.item_vectors([it for p in profiles for it in p])
            sizes = [len(p) for p in profiles]
            vectors = list(torch.split(flat, sizes)) if flat.shape[0] else [flat[:0] for _ in profiles]
        for b, v in enumerate(vectors):
            hist[b, : v.shape[0]] = v
            mask[b, : v.shape[0]] = True
        return hist, mask

    def _queries(self, questions: Sequence[Question]) -> torch.Tensor:
        texts = [self.task.query(q.input) for q in questions]
        if self.input_encoder is not None:
            with autocast(self.device, self.config.plug.dtype):
                return self.input_encoder(texts)  # [b, d_enc], trainable
        return self.history_encoder.encode(texts).to(self.device)  # cached, so never under autocast

    def _prefixes(self, questions: Sequence[Question], profiles: list[list[HistoryItem]]) -> list[str]:
        if self.retriever is None:
            return ["" for _ in questions]
        out, show = [], self.config.retrieval.show
        for q, p in zip(questions, profiles, strict=True):
            top = self.retriever.retrieve(self.task.query(q.input), p, k=1)
            if not top:
                out.append("")
            elif show == "output":  # retrieval.show: only the user's own past output
                out.append(str(top[0].fields[self.task.pair_output]).strip())
            else:
                out.append(self.task.render_example(top[0]))
        return out

    def _forward(self, questions: Sequence[Question], profiles: list[list[HistoryItem]],
                 targets: list[str] | None = None,
                 vectors: list[torch.Tensor] | None = None) -> tuple[PlugOutput, Any]:
        hist, mask = self._history(profiles, vectors)
        query = self._queries(questions) if self.config.plug.use_persona else None
        with autocast(self.device, self.config.plug.dtype):
            out = self.plug(query, hist, mask)  # soft: plug.dtype; the backbone casts it to its own dtype
        texts = [self.task.prompt(q.input) for q in questions]
        parts = [PromptParts(text=t, prefix=pre, body_start=self.task.body_start(t))
                 for t, pre in zip(texts, self._prefixes(questions, profiles), strict=True)]
        after = self.config.plug.placement == "after_text"
        return out, self.backbone.build(parts, out.soft, out.soft_mask, targets, soft_after_text=after)

    def prime(self, questions: Sequence[Question]) -> None:
        """Encode every history item (and, with a frozen input encoder, every query) of these questions once
        (fills the embedding cache)."""
        texts = [self.task.render_item(it) for q in questions for it in self._items(q.profile)]
        if self.input_encoder is None and self.config.plug.use_persona:  # frozen input encoder: cache queries too
            texts += [self.task.query(q.input) for q in questions]
        if texts:
            self.history_encoder.encode(texts, show_progress=self.config.train.progress)

    # ---- training ---------------------------------------------------------------------------------
    def _loss(self, batch: list[Example]) -> torch.Tensor:
        """Cross-entropy averaged over all target tokens of the batch, as the reference code (HF Trainer,
        T5's token-mean loss): every target token weighs the same, so a long title counts more than a
        one-token label, not each example equally. Class weights scale each example's tokens."""
        qs = [ex.question for ex in batch]
        profiles = [self._items(ex.question.profile, ex.keep) for ex in batch]
        golds = [ex.gold for ex in batch]
        _, built = self._forward(qs, profiles, golds)
        losses = self.backbone.loss(built, reduction="none")  # [b] per-example token means
        w = built.target_tokens().to(losses.device)  # [b]
        if self.class_weights:
            w = w * torch.tensor([self.class_weights.get(ex.gold, 1.0) for ex in batch], device=w.device)
        loss = (losses * w).sum() / w.sum().clamp(min=1)
        cfg = self.config.train
        if cfg.swap_contrast > 0 and self.config.plug.use_persona:
            loss = loss + cfg.swap_contrast * self._swap_hinge(qs, profiles, golds, losses)
        return loss

    def _swap_hinge(self, qs: list[Question], profiles: list[list[HistoryItem]], golds: list[str],
                    own: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of relu(margin + loss with the own history - loss with another user's history),
        the other user being the batch's next example of another user (its possibly augmented items). Pushes
        the persona to carry what is specific to the user: a persona every user shares makes both losses equal."""
        partners = swap_partners(qs)
        rows = [i for i, j in enumerate(partners) if j is not None]
        if not rows:
            return own.new_zeros(())
        _, built = self._forward([qs[i] for i in rows], [profiles[partners[i]] for i in rows], [golds[i] for i in rows])
        other = self.backbone.loss(built, reduction="none")  # [len(rows)]
        return torch.relu(self.config.train.swap_margin + own[rows] - other).mean()

    def fit(self, train: Split, dev: Split | None, run_dir: Path) -> dict[str, Any]:
        cfg = self.config.train
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.task.kind == "generation":  # the vocabulary prior's background: every training user's past outputs
            self.vocab = VocabBackground.from_questions(self.task, self.backbone.tokenizer, train.questions,
                                                        self.config.backbone.name_or_path)  # saved by `save`
        train = train.limit(cfg.limit)
        tune_dev = dev  # the "auto" decoding weights are chosen on decode.tune_limit of it, after training
        dev = dev.limit(cfg.dev_limit) if dev is not None else None
        self.prime(train.questions + (dev.questions if dev else []))
        examples = [Example(q, train.gold(q)) for q in train.questions]
        if cfg.class_balanced and self.task.kind != "generation":
            counts = Counter(ex.gold for ex in examples)
            self.class_weights = {lab: len(examples) / (len(counts) * c) for lab, c in counts.items()}
        n_items = [len(self._items(q.profile)) for q in train.questions]
        examples = augment(examples, n_items, cfg.augment_copies, cfg.augment_max_drop, cfg.seed)
        metric = MAIN_METRIC[self.task.kind]

        def evaluate() -> float:  # epoch selection always sees the users' own histories (swap is a diagnostic)
            decode, self.config.decode = self.config.decode, replace(self.config.decode, swap_history=False)
            try:
                preds = {p.id: p.output for p in self.predict(dev.questions)}
            finally:
                self.config.decode = decode
            return score_predictions(self.task, dev.golds, preds)[metric]

        memo = getattr(self.backbone, "frozen_rows", None)  # decoder-only: frozen text KV reused across epochs
        # (only after_text batches have frozen columns; __init__ refuses after_text with a trained backbone LoRA)
        if memo is not None:
            memo.max_bytes = cfg.kv_memo_mb * 2**20
        with torch.enable_grad():
            result = train_loop(
                self._parameters(), self._loss, examples, cfg,
                evaluate=evaluate if cfg.select_on_dev and dev is not None and dev.golds else None,
                higher_is_better=HIGHER_IS_BETTER[metric], on_best=lambda: self.save(run_dir),
                checkpoint=run_dir / "checkpoint" / "last.pt", state=self.state_dict,
                load_state=self.load_state_dict, train_mode=self.train_mode, desc=self.name,
                length=lambda ex: len(ex.question.input))
        if memo is not None:
            memo.clear()
            memo.max_bytes = 0
        self.load(run_dir)  # keep the best epoch's weights
        prior = resolve_auto(self.config, self.task, tune_dev, self.predict)  # decode.label_prior="auto": on dev
        vocab = resolve_vocab(self.config, self.task, tune_dev, self.predict)  # decode.vocab_prior="auto": on dev
        return {"train_examples": len(examples), "trainable_parameters": self.n_trainable(),
                "steps": result.steps, "best_epoch": result.best_epoch, "best_dev": result.best_score,
                "dev_metric": metric, "history": result.history, "train_seconds": round(result.seconds, 2),
                **({"label_prior_tuning": prior} if prior else {}),
                **({"vocab_prior_tuning": vocab} if vocab else {})}

    def onboard_cost(self, questions: Sequence[Question], run_dir: Path, users: int = 5) -> tuple[float, int]:
        """Onboarding a new user = one frozen-encoder pass over her history (no cache); her state = those
        embeddings as stored (float16 by default). Returns (mean seconds per user, mean bytes per user) over
        up to ``users`` users. The ``no_persona`` ablation uses no history: (0, 0)."""
        if not self.config.plug.use_persona:
            return 0.0, 0
        by_user: dict[str, list[HistoryItem]] = {}
        for q in questions:
            if len(q.profile) >= len(by_user.get(q.user_key, [])):
                by_user[q.user_key] = self._items(q.profile)
        secs, sizes = [], []
        for items in list(by_user.values())[:users]:
            texts = [self.task.render_item(it) for it in items]
            t0 = time.perf_counter()
            if texts:
                self.history_encoder.encoder.encode(texts)
            secs.append(time.perf_counter() - t0)
            sizes.append(len(texts) * self.history_encoder.dim * self._vector_bytes())
        return sum(secs) / max(1, len(secs)), int(sum(sizes) / max(1, len(sizes)))

    def _vector_bytes(self) -> int:
        """Bytes per stored item-vector value (the embedding cache's storage dtype: float16 = 2)."""
        cache = getattr(self.history_encoder, "cache", None)
        return int(np.dtype(cache.dtype).itemsize) if cache is not None else 4

    def _parameters(self) -> list[nn.Parameter]:
        """What training optimizes: the plug (+ a trained input encoder) and, with plug.backbone_lora, the LoRA."""
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        if self.lora is not None:
            params += [p for p in self.lora.parameters() if p.requires_grad]
        return params

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self._parameters())

    def train_mode(self, on: bool) -> None:
        self.trainable.train(on)
        if self.lora is not None:  # LoRA dropout (the frozen backbone itself stays in eval mode otherwise)
            self.lora.train(on)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained state: the plug's (and input encoder's) tensors, plus the backbone LoRA's under LORA_PREFIX."""
        state = dict(self.trainable.state_dict())
        if self.lora is not None:
            state.update({LORA_PREFIX + k: v for k, v in peft.get_peft_model_state_dict(self.lora).items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
        lora = {k[len(LORA_PREFIX):]: v for k, v in state.items() if k.startswith(LORA_PREFIX)}
        if lora and self.lora is None:
            raise PPlugError(f"{source} holds a backbone LoRA but this config has plug.backbone_lora=false "
                             "(use the run's own config.json)")
        if self.lora is not None and not lora:
            raise PPlugError(f"{source} holds no backbone LoRA but this config has plug.backbone_lora=true")
        self.trainable.load_state_dict({k: v for k, v in state.items() if not k.startswith(LORA_PREFIX)})
        if self.lora is not None:
            peft.set_peft_model_state_dict(self.lora, lora)

    def save(self, run_dir: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(run_dir) / WEIGHTS))
        if self.vocab is not None:  # the vocabulary prior's background travels with the weights
            self.vocab.save(run_dir)

    def load(self, run_dir: Path) -> None:
        path = Path(run_dir) / WEIGHTS
        self.load_state_dict(load_file(str(path)), str(path))
        self.vocab = VocabBackground.load(run_dir) or self.vocab

    # ---- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, questions: Sequence[Question],
                vectors: list[torch.Tensor] | None = None) -> list[Prediction]:
        """Predictions in order.

        Args:
            questions: the questions (their profiles are the users' histories).
            vectors: optional precomputed [n_i, d_enc] embeddings of each question's profile (the server
                stores them when items are written, so a request never re-encodes history).
        """
        self.train_mode(False)
        dec = self.config.decode
        all_profiles = swapped_profiles(questions) if dec.swap_history else [q.profile for q in questions]
        order = list(range(len(questions)))
        if dec.bucket:  # similar prompt lengths share a batch: less padding
            order.sort(key=lambda j: len(questions[j].input))
        preds: list[Prediction | None] = [None] * len(questions)
        for i in batches(len(order), dec.batch_size, f"{self.name} predict"):
            idx = order[i:i + dec.batch_size]
            qs = [questions[j] for j in idx]
            profiles = [self._items(all_profiles[j]) for j in idx]
            vecs = None
            if vectors is not None:  # the same items as `_items` picks (no swap: the server never swaps)
                vecs = [vectors[j][most_recent(questions[j].profile, self.config.plug.max_history)] for j in idx]
            out, built = self._forward(qs, profiles, vectors=vecs)
            allowed = [self.task.labels_for(q.input) for q in qs]  # an input that lists its labels restricts them
            label_scores: list[dict[str, float]] = []
            raws, outs = decode_outputs(self.backbone, self.task, built, dec, allowed,
                                        [all_profiles[j] for j in idx], label_scores, self.vocab)
            n_tokens = built.attention_mask.sum(dim=1).tolist()
            for b, (j, raw, pred) in enumerate(zip(idx, raws, outs, strict=True)):
                preds[j] = Prediction(qs[b].id, pred, raw, self.explain(out, b, profiles[b]), int(n_tokens[b]),
                                      label_scores[b] if label_scores else None)
        return preds  # type: ignore[return-value]  # every slot is filled

    def explain(self, out: PlugOutput, b: int, profile: list[HistoryItem], top: int = 3) -> list[dict[str, Any]]:
        """The history items with the largest aggregator weights for example ``b``."""
        if out.weights is None or not profile:
            return []
        w = out.weights[b, : len(profile)]
        order = w.argsort(descending=True)[:top].tolist()
        return [{"item_id": profile[j].id, "weight": round(float(w[j]), 4),
                 "text": self.task.render_item(profile[j])[:160]} for j in order]


def _build_pplug(config: RunConfig, resources: Resources | None = None) -> PPlugMethod:
    return PPlugMethod(config, resources)  # config.method selects plain PPlug or PPlug + RAG


register_method("pplug")(_build_pplug)
register_method("pplug-rag")(_build_pplug)
