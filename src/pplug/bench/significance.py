"""Is a difference between two bench rows more than noise? A paired bootstrap over the evaluation questions.

The test sets here are small (news_categorize has 56 questions: one question is 1.8 accuracy points), so each
pairwise target verdict also carries a 95% interval for the difference it rests on: resample the questions
with replacement, recompute both rows' main metric on the same resample (paired: the same questions for
both), and take the 2.5th and 97.5th percentiles of the difference. A verdict whose threshold lies outside
the interval is "clear"; otherwise it is "within noise".

Only metrics that are means of per-question values have a per-question form here (accuracy, MAE, ROUGE-1/-L:
`pplug.metrics.per_question`); macro-F1 and RMSE verdicts carry no interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def paired_bootstrap(a: Sequence[float], b: Sequence[float], relative: bool = False, resamples: int = RESAMPLES,
                     level: float = LEVEL, seed: int = 0) -> dict[str, float]:
    """The difference mean(a) - mean(b) of two per-question score vectors and its bootstrap interval.

    Args:
        a, b: per-question values of two methods on the same questions, in the same order.
        relative: the difference as a share of A's score, (mean(a) - mean(b)) / |mean(a)| (the swap drop).

    Returns:
        ``{"difference", "low", "high", "level", "resamples", "questions"}`` (low/high: the percentile interval).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty vectors of one length, got {x.shape} and {y.shape}")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    ma, mb = x[idx].mean(axis=1), y[idx].mean(axis=1)
    diffs = ma - mb
    point = float(x.mean() - y.mean())
    if relative:
        with np.errstate(divide="ignore", invalid="ignore"):
            diffs = np.where(ma != 0, diffs / np.abs(ma), 0.0)
        point = point / abs(float(x.mean())) if x.mean() != 0 else 0.0
    low, high = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"difference": point, "low": float(low), "high": float(high), "level": level,
            "resamples": resamples, "questions": len(x)}


def interval_text(result: dict[str, Any], relative: bool = False) -> str:
    """``gain +0.018, 95% interval [-0.071, +0.107]``; relative (the drop is already in the verdict's text):
    ``95% interval [+21.2%, +58.6%]``."""
    if relative:
        return f"{result['level']:.0%} interval [{result['low']:+.1%}, {result['high']:+.1%}]"
    return (f"gain {result['difference']:+.3f}, {result['level']:.0%} interval "
            f"[{result['low']:+.3f}, {result['high']:+.3f}]")
