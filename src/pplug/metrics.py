"""Offline metric functions reproducing the official LaMP scorer.

Classification (LaMP-1/2): accuracy and macro-F1 over the full label list; rating (LaMP-3): MAE and RMSE
with the official fallback for unparsable predictions; generation (LaMP-4/5/7): ROUGE-1 and ROUGE-L
F-measures from ``rouge_score`` averaged over examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

METRIC_KINDS = ("classification", "rating", "generation")
MAIN_METRIC = {"classification": "accuracy", "rating": "mae", "generation": "rouge-1"}
KIND_METRICS = {"classification": ("accuracy", "f1"), "rating": ("mae", "rmse"), "generation": ("rouge-1", "rouge-L")}
HIGHER_IS_BETTER = {
    "accuracy": True,
    "f1": True,
    "mae": False,
    "rmse": False,
    "rouge-1": True,
    "rouge-L": True,
}
PER_QUESTION = {"accuracy", "mae", "rouge-1", "rouge-L"}  # metrics that are means of per-question values

_SCORER: Any = None


def _check_lengths(golds: Sequence[str], preds: Sequence[str]) -> None:
    """Raise ValueError when the inputs are empty or of different lengths."""
    if len(golds) != len(preds):
        raise ValueError(f"golds and preds differ in length: {len(golds)} != {len(preds)}")
    if len(golds) == 0:
        raise ValueError("cannot score empty inputs")


def _label_ids(golds: Sequence[str], preds: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Gold and predicted label indices (official LaMP mapping: stripped, exact; an unknown prediction is -1)."""
    _check_lengths(golds, preds)
    if len(labels) == 0:
        raise ValueError("labels must not be empty")
    index: dict[str, int] = {}
    for i, label in enumerate(labels):
        index.setdefault(label, i)  # first occurrence wins, like list.index
    gold_ids = []
    for pos, gold in enumerate(golds):
        key = str(gold).strip()
        if key not in index:
            raise ValueError(f"gold label {gold!r} at position {pos} is not in the label list")
        gold_ids.append(index[key])
    y_true = np.asarray(gold_ids)
    y_pred = np.asarray([index.get(str(p).strip(), -1) for p in preds])
    return y_true, y_pred


def classification_metrics(
    golds: Sequence[str], preds: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """Accuracy and macro-F1 with the official LaMP label mapping.

    Both strings are stripped and matched exactly (case-sensitive) against ``labels``; a prediction outside
    the list maps to -1 and is always wrong. Macro-F1 averages per-label F1 over every label in ``labels``
    (a label with zero denominators contributes 0).

    Args:
        golds: Reference labels; each must be in ``labels`` after stripping.
        preds: Predicted strings.
        labels: The task's full label list.

    Returns:
        ``{"accuracy": ..., "f1": ...}``.
    """
    y_true, y_pred = _label_ids(golds, preds, labels)
    accuracy = float(np.mean(y_true == y_pred))
    f1s = []
    for k in range(len(labels)):
        tp = int(np.sum((y_true == k) & (y_pred == k)))
        n_pred = int(np.sum(y_pred == k))
        n_true = int(np.sum(y_true == k))
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        denom = precision + recall
        f1s.append(2 * precision * recall / denom if denom else 0.0)
    return {"accuracy": accuracy, "f1": float(np.mean(f1s))}


def _rating_errors(golds: Sequence[str], preds: Sequence[str], low: float, high: float) -> np.ndarray:
    """Per-question signed errors (prediction - gold), unparsable predictions at the farther end of the scale."""
    _check_lengths(golds, preds)
    errors = []
    for pos, (gold, pred) in enumerate(zip(golds, preds, strict=True)):
        try:
            g = float(str(gold).strip())
        except ValueError:
            raise ValueError(f"gold rating {gold!r} at position {pos} is not a number") from None
        if not math.isfinite(g):
            raise ValueError(f"gold rating {gold!r} at position {pos} is not a finite number")
        try:
            p = float(str(pred).strip())
        except ValueError:
            p = math.nan
        if not math.isfinite(p):  # "nan", "inf": unparsable, like text (the official scorer raises on them)
            p = low if abs(low - g) > abs(high - g) else high
        errors.append(p - g)
    return np.asarray(errors, dtype=float)


def rating_metrics(golds: Sequence[str], preds: Sequence[str], low: float = 1.0,
                   high: float = 5.0) -> dict[str, float]:
    """MAE and RMSE for ratings (LaMP: 1-5) with the official fallback for unparsable predictions.

    An unparsable prediction (not a number, or a non-finite one such as "nan" or "inf") becomes ``low`` if
    ``abs(low - gold) > abs(high - gold)`` else ``high`` (the farther end of the scale).

    Args:
        golds: Reference ratings as strings; each must parse as a float.
        preds: Predicted strings.
        low, high: the ends of the rating scale (a task's first and last label).

    Returns:
        ``{"mae": ..., "rmse": ...}``.
    """
    err = _rating_errors(golds, preds, low, high)
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(math.sqrt(np.mean(err**2)))}


def _get_scorer() -> Any:
    """Return the module-level ROUGE scorer, creating it on first use."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    return _SCORER


def _rouge_per_question(golds: Sequence[str], preds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-question ROUGE-1 and ROUGE-L F-measures."""
    _check_lengths(golds, preds)
    scorer = _get_scorer()
    r1, rl = [], []
    for gold, pred in zip(golds, preds, strict=True):
        scores = scorer.score(target=str(gold).strip(), prediction=str(pred).strip())
        r1.append(scores["rouge1"].fmeasure)
        rl.append(scores["rougeL"].fmeasure)
    return np.asarray(r1, dtype=float), np.asarray(rl, dtype=float)


def generation_metrics(golds: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measures (``rouge_score`` default tokenizer, no stemming).

    Args:
        golds: Reference texts.
        preds: Generated texts.

    Returns:
        ``{"rouge-1": ..., "rouge-L": ...}``.
    """
    r1, rl = _rouge_per_question(golds, preds)
    return {"rouge-1": float(np.mean(r1)), "rouge-L": float(np.mean(rl))}


def score(
    kind: str, golds: Sequence[str], preds: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Dispatch to the metric function for ``kind``.

    Args:
        kind: One of ``METRIC_KINDS``.
        golds: Reference strings.
        preds: Predicted strings.
        labels: Full label list; required for ``"classification"``; for ``"rating"`` its first and last
            labels are the ends of the scale (default 1..5).

    Returns:
        The metric dictionary of the chosen kind.
    """
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; valid kinds: {', '.join(METRIC_KINDS)}")
    _check_lengths(golds, preds)
    if kind == "classification":
        if labels is None:
            raise ValueError("classification scoring requires labels")
        return classification_metrics(golds, preds, labels)
    if kind == "rating":
        if labels:
            return rating_metrics(golds, preds, float(labels[0]), float(labels[-1]))
        return rating_metrics(golds, preds)
    return generation_metrics(golds, preds)


def per_question(kind: str, golds: Sequence[str], preds: Sequence[str], labels: Sequence[str] | None = None,
                 metric: str | None = None) -> np.ndarray:
    """The per-question values whose mean is ``metric`` (default: the kind's main metric).

    Accuracy: 1/0 per question; MAE: absolute error (same fallback as `rating_metrics`); ROUGE-1/-L: the
    question's F-measure. ``np.mean`` of the result equals `score`'s figure; used for paired bootstrap
    confidence intervals (`pplug.bench.significance`). Macro-F1 and RMSE are not per-question means.
    """
    metric = metric or MAIN_METRIC.get(kind, "")
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; valid kinds: {', '.join(METRIC_KINDS)}")
    if metric not in PER_QUESTION or metric not in KIND_METRICS[kind]:
        raise ValueError(f"{metric!r} is not a per-question mean of a {kind} task "
                         f"(per-question metrics: {', '.join(sorted(PER_QUESTION & set(KIND_METRICS[kind])))})")
    if kind == "classification":
        if labels is None:
            raise ValueError("classification scoring requires labels")
        y_true, y_pred = _label_ids(golds, preds, labels)
        return (y_true == y_pred).astype(float)
    if kind == "rating":
        low, high = (float(labels[0]), float(labels[-1])) if labels else (1.0, 5.0)
        return np.abs(_rating_errors(golds, preds, low, high))
    r1, rl = _rouge_per_question(golds, preds)
    return r1 if metric == "rouge-1" else rl
