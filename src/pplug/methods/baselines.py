"""Training-free baselines on the same interface: ``zero-shot`` and ``rag-bm25|rag-dense|rag-recency``."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pplug.backbones import PromptParts
from pplug.config import RunConfig
from pplug.data.records import HistoryItem, Question
from pplug.devices import resolve_device
from pplug.label_prior import combine, resolve_auto
from pplug.methods.base import Prediction, register_method
from pplug.progress import batches
from pplug.resources import Resources
from pplug.retrieval import Retriever, build_retriever
from pplug.tasks import Task, get_task
from pplug.vocab_prior import VocabBackground, processor_for


def truncate_tokens(tokenizer, text: str, n: int) -> str:
    """``text`` cut to its first ``n`` tokens (LaMP gives each retrieved item a share of a token budget)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return text if len(ids) <= n else tokenizer.decode(ids[:n], skip_special_tokens=True)


def fit_example(task: Task, item: HistoryItem, tokenizer, n: int) -> str:
    """A retrieved item rendered as an example in about ``n`` tokens, its output field (tag, title, score)
    never cut: only the other text fields are cut from their end, the longest first (LaMP-2's label comes
    last, so cutting the rendered example would drop it). With no other field (LaMP-7's tweet), the text is
    cut as a whole.
    """
    shown = task.render_example(item)
    if len(tokenizer(shown, add_special_tokens=False).input_ids) <= n:
        return shown
    names = [f for f in dict.fromkeys(re.findall(r"{(\w+)", task.item_example))
             if f != task.pair_output and isinstance(item.fields.get(f), str)]
    if not names:
        return truncate_tokens(tokenizer, shown, n)
    fixed = task.item_example.format(**{**item.fields, **{f: "" for f in names}})
    room = max(0, n - len(tokenizer(fixed, add_special_tokens=False).input_ids))
    lengths = [len(tokenizer(item.fields[f], add_special_tokens=False).input_ids) for f in names]
    budget = _water_fill(lengths, room)
    cut = {f: truncate_tokens(tokenizer, item.fields[f], b) if b else "" for f, b in zip(names, budget, strict=True)}
    return task.item_example.format(**{**item.fields, **cut}).strip()


def _water_fill(lengths: list[int], room: int) -> list[int]:
    """Token budgets per field summing to at most ``room``: short fields keep all, long ones share the rest."""
    budget, left, todo = [0] * len(lengths), room, sorted(range(len(lengths)), key=lambda i: lengths[i])
    for j, i in enumerate(todo):
        budget[i] = min(lengths[i], left // (len(todo) - j))
        left -= budget[i]
    return budget


def show_item(task: Task, item: HistoryItem, tokenizer, n: int, show: str = "example") -> str:
    """A retrieved item as shown in a prompt (``retrieval.show``): the whole example in about ``n`` tokens
    (`fit_example`), or only the user's own output (``output``: her past title, headline or label)."""
    if show == "output":
        return truncate_tokens(tokenizer, str(item.fields[task.pair_output]).strip(), n)
    return fit_example(task, item, tokenizer, n)


class RagPrompter:
    """Builds the user-turn text: the k retrieved items of the user's own profile, then the input."""

    def __init__(self, task: Task, retriever: Retriever | None, k: int, item_tokens: int, tokenizer,
                 show: str = "example"):
        self.task, self.retriever, self.k, self.show = task, retriever, k, show
        self.per_item = max(8, item_tokens // max(1, k))
        self.tokenizer = tokenizer

    def text(self, question: Question, before: str | None = None) -> str:
        if self.retriever is None or self.k <= 0:
            return self.task.prompt(question.input)
        items = self.retriever.retrieve(self.task.query(question.input), question.profile, self.k, before)
        shown = [show_item(self.task, it, self.tokenizer, self.per_item, self.show) for it in items]
        return self.task.prompt(question.input, shown)


def decode_outputs(backbone, task: Task, built, decode, labels: Sequence[tuple[str, ...] | None] | None = None,
                   profiles: Sequence[Sequence[HistoryItem]] | None = None,
                   scores_out: list[dict[str, float]] | None = None,
                   vocab: VocabBackground | None = None) -> tuple[list[str], list[str]]:
    """Raw outputs and parsed predictions for a built batch: generate + parse, or rank the labels.

    Args:
        labels: per row, the labels its question allows (``task.labels_for(input)``: an input that lists its
            labels restricts parsing and ranking to them); the task's labels when None.
        profiles: per row, the history whose label prior multiplies the LLM's label distribution when
            ``decode.label_prior`` > 0 (rank decoding; see `pplug.label_prior`, also for ``decode.label_shift``).
        scores_out: if given, receives each row's LLM-only label log-probs (label -> log p) for tuning that
            weight on dev.
        vocab: the background of the user vocabulary prior (generation, ``decode.vocab_prior`` > 0: the
            ``profiles``' past outputs bias decoding; see `pplug.vocab_prior`).
    """
    rows = list(labels) if labels is not None else [None] * len(built)
    rows = [r or task.labels for r in rows]
    if task.kind != "generation" and decode.classify == "rank":
        options = list(dict.fromkeys(lab for r in rows for lab in r))  # union, one backbone call
        scores = backbone.score_options(built, options)  # [b, n_options] log-likelihoods
        allowed = torch.tensor([[o in set(r) for o in options] for r in rows]).to(scores.device)  # [b, n_options]
        scores = scores.float().masked_fill(~allowed, float("-inf"))
        if scores_out is not None:
            llm = torch.log_softmax(scores, dim=-1)
            scores_out.extend({o: float(llm[b, j]) for j, o in enumerate(options) if allowed[b, j]}
                              for b in range(len(rows)))
        weight = decode.label_prior if isinstance(decode.label_prior, int | float) else 0.0
        shift = decode.label_shift if isinstance(decode.label_shift, int | float) else 0.0
        if (weight and profiles is not None) or (shift and decode.label_marginal):
            scores = combine(scores, task, profiles or [[]] * len(rows), options, float(weight),
                             decode.prior_smoothing, float(shift), decode.label_marginal)
        best = [options[i] for i in scores.argmax(dim=1).tolist()]
        return best, best
    weight = decode.vocab_prior if isinstance(decode.vocab_prior, int | float) else 0.0
    size = backbone.model.get_input_embeddings().weight.shape[0]
    processor = processor_for(task, backbone.tokenizer, profiles, vocab, float(weight), size)
    raws = backbone.generate(built, decode.new_tokens(task.kind), decode.num_beams, logits_processor=processor)
    return raws, [task.parse(r, lab) for r, lab in zip(raws, rows, strict=True)]


def generate_predictions(backbone, task: Task, questions: Sequence[Question], texts: Sequence[str],
                         decode) -> list[Prediction]:
    """Batched deterministic decoding + parsing for plain-text prompts."""
    preds: list[Prediction] = []
    with torch.no_grad():
        for i in batches(len(questions), decode.batch_size, "predict"):
            qs, ts = questions[i:i + decode.batch_size], texts[i:i + decode.batch_size]
            built = backbone.build([PromptParts(text=t, body_start=task.body_start(t)) for t in ts])
            label_scores: list[dict[str, float]] = []
            raws, outs = decode_outputs(backbone, task, built, decode, [task.labels_for(q.input) for q in qs],
                                        [q.profile for q in qs], label_scores)
            n_tokens = built.attention_mask.sum(dim=1).tolist()
            ls = label_scores or [None] * len(qs)
            preds += [Prediction(q.id, o, r, [], int(n), s) for q, r, o, n, s in zip(qs, raws, outs, n_tokens, ls,
                                                                                    strict=True)]
    return preds


class PromptMethod:
    """The frozen backbone with the task prompt, optionally with k retrieved history items (no training)."""

    def __init__(self, config: RunConfig, resources: Resources | None, retriever: str | None):
        resources = resources or Resources()
        self.config, self.name, self.task = config, config.method, get_task(config.task)
        device = resolve_device(config.device)
        self.backbone = resources.backbone(config.backbone, device)
        encoder = resources.encoder(config.encoder, device) if retriever == "dense" else None
        r = build_retriever(retriever, self.task, encoder) if retriever else None
        self.prompter = RagPrompter(self.task, r, config.retrieval.k, config.retrieval.item_tokens,
                                    self.backbone.tokenizer, config.retrieval.show)

    def fit(self, train, dev, run_dir: Path) -> dict[str, Any]:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"trainable_parameters": 0, "train_seconds": 0.0, "steps": 0}
        prior = resolve_auto(self.config, self.task, dev, self.predict)
        return report | ({"label_prior_tuning": prior} if prior else {})

    def load(self, run_dir: Path) -> None:
        return None

    def save(self, run_dir: Path) -> None:
        """Nothing to save: the method has no trained state (its config says everything)."""
        Path(run_dir).mkdir(parents=True, exist_ok=True)

    def onboard_cost(self, questions: Sequence[Question], run_dir: Path, users: int = 5) -> tuple[float, int]:
        """Onboarding = indexing her history: BM25 builds its index per request from the stored items (timed
        here as one retrieval), dense encodes the items (stored as float32 embeddings), recency/zero-shot: 0."""
        retriever = self.prompter.retriever
        if retriever is None or self.config.retrieval.retriever == "recency":
            return 0.0, 0
        seen: dict[str, Question] = {}
        for q in questions:
            if len(q.profile) >= len(seen.get(q.user_key, q).profile):
                seen[q.user_key] = q
        secs, sizes = [], []
        for q in list(seen.values())[:users]:
            t0 = time.perf_counter()
            if self.config.retrieval.retriever == "dense":
                retriever.encoder.encoder.encode([self.task.render_item(it) for it in q.profile])
                sizes.append(len(q.profile) * retriever.encoder.dim * 4)
            else:
                retriever.retrieve(self.task.query(q.input), q.profile, self.config.retrieval.k)
                sizes.append(0)
            secs.append(time.perf_counter() - t0)
        return sum(secs) / max(1, len(secs)), int(sum(sizes) / max(1, len(sizes)))

    def predict(self, questions: Sequence[Question]) -> list[Prediction]:
        texts = [self.prompter.text(q) for q in questions]
        return generate_predictions(self.backbone, self.task, questions, texts, self.config.decode)


@register_method("zero-shot")
def _zero_shot(config: RunConfig, resources: Resources | None = None) -> PromptMethod:
    return PromptMethod(config, resources, None)


def _rag(retriever: str):
    def build(config: RunConfig, resources: Resources | None = None) -> PromptMethod:
        config.retrieval.retriever = retriever
        return PromptMethod(config, resources, retriever)

    return build


for _r in ("bm25", "dense", "recency"):
    register_method(f"rag-{_r}")(_rag(_r))
