"""The user's vocabulary prior: a logit bias toward the tokens of her own past outputs, for generation.

The generation counterpart of `pplug.label_prior`. For a generation question of user u, at every decoding step:

    score(v) = logit_LLM(v) + alpha * max(0, PMI_u(v))       (v not yet generated in this output)
    PMI_u(v) = log( df_u(v) / n_u ) - log( (df(v) + 1) / (N + 1) )

``df_u(v)`` is the number of the user's history items whose output field (``task.pair_output``: her past
titles, headlines, tweets) contains token v, ``n_u`` the number of her items with an output, and ``df(v)`` /
``N`` the same over every distinct history item of the training data (the background, `VocabBackground`,
saved with the run). Only tokens the user uses more often than users in general get a bonus; a token's bonus is
spent once it has been generated (no repetition loop). alpha = 0 is the LLM alone. ``decode.vocab_prior`` is
alpha; "auto" picks it on dev from `GRID` after training (one generation pass per value; ties keep the
smaller alpha).

Why: a user's past outputs predict words of her next one that the input does not contain (README "Generation:
does the persona carry the user?"), but the frozen backbone neither copies them from its prompt nor reads them
from the persona; the bias puts them within its reach at decoding. A token is counted in both of its forms
(after a space and at the start of a text), as the tokenizer splits them differently.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from pplug.data.records import HistoryItem, Question, Split
from pplug.errors import PPlugError
from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC
from pplug.scoring import score_predictions
from pplug.tasks import Task
from pplug.tuning import tuning_dev

GRID = (0.0, 0.125, 0.25, 0.5)  # alpha values tried on dev by "auto"
FILE = "vocab_background.json"


def output_tokens(tokenizer, text: str) -> set[int]:
    """The token ids of an output text, in both forms: after a space (mid-sentence) and at the start."""
    text = text.strip()
    if not text:
        return set()
    return set(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) | set(
        tokenizer(text, add_special_tokens=False)["input_ids"])


def item_output(task: Task, item: HistoryItem) -> str | None:
    value = item.fields.get(task.pair_output)
    return None if value is None else str(value)


class VocabBackground:
    """Document frequencies of tokens over the outputs of distinct history items (the background of the PMI).

    Args:
        df: token id -> number of items whose output contains it.
        n_docs: number of items counted.
        backbone: the backbone whose tokenizer made the ids (a run loads it only for that backbone).
    """

    def __init__(self, df: dict[int, int], n_docs: int, backbone: str = ""):
        self.df, self.n_docs, self.backbone = df, n_docs, backbone

    @classmethod
    def from_questions(cls, task: Task, tokenizer, questions: Iterable[Question],
                       backbone: str = "") -> VocabBackground:
        """Count every distinct history item (by id, else by its output text) of the questions' profiles."""
        df: Counter[int] = Counter()
        seen: set[str] = set()
        for q in questions:
            for it in q.profile:
                text = item_output(task, it)
                key = it.id or text
                if text is None or key in seen:
                    continue
                seen.add(key)
                df.update(output_tokens(tokenizer, text))
        return cls(dict(df), len(seen), backbone)

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / FILE
        payload = {"backbone": self.backbone, "n_docs": self.n_docs, "df": {str(k): v for k, v in self.df.items()}}
        path.write_text(json.dumps(payload), encoding="utf-8")
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> VocabBackground | None:
        """The run's background, or None if it has none."""
        path = Path(run_dir) / FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls({int(k): int(v) for k, v in raw["df"].items()}, int(raw["n_docs"]), raw.get("backbone", ""))
        except (ValueError, KeyError, TypeError) as e:
            raise PPlugError(f"{path}: not a vocabulary background file ({e}); retrain the run") from e


def fill_missing_background(method: Any, task: Task, train: Callable[[], Iterable[Question]], backbone: str) -> bool:
    """Give a PPlug method loaded from a run trained before the prior existed (no background file) the background
    its training would have counted, from the questions ``train()`` returns; True if it counted one (False for a
    method with a background already or without one at all)."""
    if not hasattr(method, "vocab") or method.vocab is not None:
        return False
    method.vocab = VocabBackground.from_questions(task, method.backbone.tokenizer, train(), backbone)
    return True


def user_bias(task: Task, tokenizer, profile: Sequence[HistoryItem], background: VocabBackground, weight: float,
              vocab_size: int) -> Tensor:
    """[V] alpha * max(0, PMI_u(v)) for the tokens of the profile's outputs, 0 elsewhere."""
    bias = torch.zeros(vocab_size)
    outputs = [t for t in (item_output(task, it) for it in profile) if t is not None and t.strip()]
    if not outputs or weight == 0:
        return bias
    df_u: Counter[int] = Counter()
    for text in outputs:
        df_u.update(output_tokens(tokenizer, text))
    log_bg = math.log(background.n_docs + 1)
    ids, values = [], []
    for v, k in df_u.items():
        pmi = math.log(k / len(outputs)) - math.log(background.df.get(v, 0) + 1) + log_bg
        if pmi > 0 and 0 <= v < vocab_size:
            ids.append(v)
            values.append(weight * pmi)
    if ids:
        bias[torch.tensor(ids)] = torch.tensor(values)
    return bias


class VocabBias(LogitsProcessor):
    """Adds each row's bias to the next-token scores, minus the bonus of tokens that row already generated.

    Args:
        bias: [b, V] per question; with beam search the scores have b * num_beams rows (beams of a question
            are consecutive, as in HF generate) and each beam gets its question's bias.
    """

    def __init__(self, bias: Tensor):
        self.bias = bias

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        bias = self.bias.to(device=scores.device, dtype=scores.dtype)
        if scores.shape[0] != bias.shape[0]:
            bias = bias.repeat_interleave(scores.shape[0] // bias.shape[0], dim=0)
        width = min(bias.shape[1], scores.shape[1])
        bias = bias[:, :width]
        if input_ids.shape[1]:  # a token's bonus is spent once generated; ids past the bias (a head wider than
            spent = torch.cat([bias, bias.new_zeros(bias.shape[0], 1)], dim=1)  # the bias) land in a spare column
            bias = spent.scatter_(1, input_ids.clamp(0, width), 0.0)[:, :width]
        out = scores.clone()
        out[:, :width] += bias
        return out


def processor_for(task: Task, tokenizer, profiles: Sequence[Sequence[HistoryItem]] | None,
                  background: VocabBackground | None, weight: float, vocab_size: int) -> VocabBias | None:
    """The batch's logits processor, or None when the prior is off (weight 0 or no profiles)."""
    if not weight or profiles is None or task.kind != "generation":
        return None
    if background is None:
        raise PPlugError(f"decode.vocab_prior > 0 needs the run's vocabulary background ({FILE}, written when "
                         "pplug/pplug-rag train); retrain the run, or set decode.vocab_prior=0")
    return VocabBias(torch.stack([user_bias(task, tokenizer, p, background, weight, vocab_size) for p in profiles]))


def tune_on_dev(predict: Callable[[Sequence[Question]], list[Any]], set_weight: Callable[[float], None], task: Task,
                dev: Split, weights: Sequence[float] = GRID) -> dict[str, Any]:
    """Choose alpha on dev: one generation pass per value (``set_weight`` sets it before each pass).

    Returns:
        ``{"vocab_prior": alpha, "dev_scores": {alpha: score}, "metric": name}``; ties keep the smaller alpha.
    """
    metric = MAIN_METRIC[task.kind]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    scores = {}
    for w in weights:
        set_weight(w)
        preds = {p.id: p.output for p in predict(dev.questions)}
        scores[w] = score_predictions(task, dev.golds, preds)[metric]
    best = max(weights, key=lambda w: (sign * scores[w], -w))
    set_weight(best)
    return {"vocab_prior": best, "dev_scores": {str(w): round(s, 4) for w, s in scores.items()}, "metric": metric}


def resolve_auto(config: Any, task: Task, dev: Split | None,
                 predict: Callable[[Sequence[Question]], list[Any]]) -> dict[str, Any] | None:
    """Choose ``decode.vocab_prior`` on dev where it is "auto" and write the number into the config.

    Generation tasks with a dev split with golds only; otherwise "auto" becomes 0 and the reason is returned.
    Returns the tuning report, or None if it is not "auto".
    """
    decode = config.decode
    if decode.vocab_prior != "auto":
        return None
    decode.vocab_prior = 0.0
    if task.kind != "generation":
        return {"vocab_prior": 0.0, "reason": "the vocabulary prior applies to generation tasks"}
    if dev is None or not dev.golds:
        return {"vocab_prior": 0.0, "reason": "no dev split with golds to choose the vocabulary prior on"}
    with tuning_dev(decode, dev) as dev:  # the first decode.tune_limit questions, the users' own histories
        return {**tune_on_dev(predict, lambda w: setattr(decode, "vocab_prior", w), task, dev),
                "dev_questions": len(dev.questions)}
