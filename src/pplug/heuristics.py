"""Non-LLM reference predictors that use the same history: the bars an LLM method must clear.

- classification: the global-majority label (from train) and the user's own most frequent label;
- rating: the user's mean rating;
- generation: the output of the user's history item nearest to the input (encoder cosine, or word
  overlap when no encoder is given).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from pplug.data.records import Question, Split
from pplug.errors import PPlugError
from pplug.tasks import Task


def global_majority(train: Split) -> str:
    """The most frequent gold output of the train split (ties: first seen)."""
    if not train.golds:
        raise PPlugError(f"{train.source}: the train split has no gold outputs for a majority label")
    return Counter(train.golds[q.id] for q in train.questions).most_common(1)[0][0]


def user_majority(task: Task, question: Question, fallback: str) -> str:
    """The user's most frequent label in her profile (ties: the most recent); ``fallback`` if empty."""
    values = [str(it.fields[task.pair_output]).strip() for it in question.profile]
    if not values:
        return fallback
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in reversed(values) if counts[v] == best)


def user_mean_rating(task: Task, question: Question, fallback: str) -> str:
    """The user's mean profile rating, rounded to the nearest allowed rating."""
    scores = [float(it.fields[task.pair_output]) for it in question.profile]
    if not scores:
        return fallback
    low, high = (float(task.labels[0]), float(task.labels[-1])) if task.labels else (1.0, 5.0)
    return str(int(np.clip(round(float(np.mean(scores))), low, high)))


def _overlap(a: str, b: str) -> float:
    wa, wb = set(a.lower().split()), set(b.lower().split())
    return len(wa & wb) / (len(wa | wb) or 1)


def nearest_item_output(task: Task, question: Question,
                        encode: Callable[[list[str]], np.ndarray] | None = None) -> str:
    """The output of the profile item most similar to the input (cosine of encodings, else Jaccard)."""
    if not question.profile:
        return ""
    query = task.query(question.input)
    texts = [task.render_item(it) for it in question.profile]
    if encode is None:
        sims = [_overlap(query, t) for t in texts]
    else:
        vecs = encode([query, *texts])  # [1 + n, d], L2-normalized
        sims = list(vecs[1:] @ vecs[0])
    best = int(np.argmax(sims))
    return str(question.profile[best].fields[task.pair_output]).strip()


def heuristic_predictions(task: Task, train: Split, split: Split,
                          encode: Callable[[list[str]], np.ndarray] | None = None) -> dict[str, dict[str, str]]:
    """All reference predictors that apply to the task: name -> (question id -> prediction)."""
    out: dict[str, dict[str, str]] = {}
    if task.kind == "generation":
        out["user-nearest-item"] = {q.id: nearest_item_output(task, q, encode) for q in split.questions}
        return out
    majority = global_majority(train)
    out["global-majority"] = {q.id: majority for q in split.questions}
    if task.kind == "classification":
        out["user-majority"] = {q.id: user_majority(task, q, majority) for q in split.questions}
    else:
        out["user-mean-rating"] = {q.id: user_mean_rating(task, q, majority) for q in split.questions}
    return out
