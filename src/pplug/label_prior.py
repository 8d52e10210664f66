"""The user's label prior, combined with the LLM's label scores as a product of experts.

For a classification (or rating) question of user u with label set Y (|Y| = L):

    log p(y | x, u) = log_softmax_y( s_LLM(y | x, u) ) + alpha * log p_u(y) + const
    p_u(y)          = (count_u(y) + beta) / (n_u + beta * L)

``s_LLM`` are the backbone's summed label log-likelihoods from rank decoding (``score_options``),
``count_u(y)`` is how often y is the output field of the user's history items, ``beta`` is Dirichlet
smoothing (``decode.prior_smoothing``) and ``alpha`` the prior's weight (``decode.label_prior``).
alpha = 0 is the LLM alone; alpha -> inf is the user's most frequent label (the user-majority heuristic,
ties broken by the LLM). With ``decode.label_prior = "auto"`` a trained method picks alpha on dev
(`tune_on_dev`) and stores the chosen number in its run config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pplug.data.records import HistoryItem, Question, Split
from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC
from pplug.scoring import score_predictions
from pplug.tasks import Task

GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # alpha values tried on dev by "auto"
PRIOR_ALONE = 1e4  # an alpha large enough that the prior decides (the LLM only breaks ties)


def prior_log_probs(task: Task, profile: Sequence[HistoryItem], labels: Sequence[str], smoothing: float) -> Tensor:
    """[L] log p_u(y): Dirichlet-smoothed frequencies of the labels in the profile's output field.

    Items whose output is not one of ``labels`` (or that lack the field) are not counted; an empty
    profile (or ``smoothing`` = 0 with no counted item) gives the uniform prior.
    """
    index = {lab: i for i, lab in enumerate(labels)}
    counts = torch.zeros(len(labels))
    for item in profile:
        value = item.fields.get(task.pair_output)
        i = index.get(str(value).strip()) if value is not None else None
        if i is not None:
            counts[i] += 1
    total = counts + smoothing
    if float(total.sum()) <= 0:
        return torch.full((len(labels),), -math.log(len(labels)))
    return torch.log(total.clamp_min(1e-12)) - math.log(float(total.sum()))


def combine(scores: Tensor, task: Task, profiles: Sequence[Sequence[HistoryItem]], labels: Sequence[str],
            weight: float, smoothing: float) -> Tensor:
    """[b, L] product-of-experts log scores from [b, L] LLM label log-likelihoods and the users' priors."""
    llm = torch.log_softmax(scores.float(), dim=-1)
    if weight == 0:
        return llm
    prior = torch.stack([prior_log_probs(task, p, labels, smoothing) for p in profiles]).to(llm.device)  # [b, L]
    return llm + weight * prior


def tune_on_dev(predict: Callable[[Sequence[Question]], list[Any]], task: Task, dev: Split,
                profiles: Sequence[Sequence[HistoryItem]], smoothing: float) -> dict[str, Any]:
    """Choose alpha on dev: one prediction pass with the LLM alone, then every alpha of `GRID` offline.

    Args:
        predict: the method's predict (with ``decode.label_prior = 0``); its predictions carry
            ``label_scores`` (label -> LLM log-prob over the labels that question allows).
        profiles: the history each dev question's prior is taken from (its own profile).

    Returns:
        ``{"label_prior": best alpha, "dev_scores": {alpha: score}, "prior_alone": score, "metric": name}``
        (ties go to the smaller alpha: the LLM alone unless the prior helps).
    """
    preds = predict(dev.questions)
    if any(p.label_scores is None for p in preds):
        raise ValueError("tune_on_dev needs predictions with label_scores (rank decoding)")
    metric = MAIN_METRIC[task.kind]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    rows = [(list(p.label_scores), torch.tensor([list(p.label_scores.values())])) for p in preds]  # [1, L_i]

    def dev_score(weight: float) -> float:
        out = {}
        for q, (labels, llm), profile in zip(dev.questions, rows, profiles, strict=True):
            out[q.id] = labels[int(combine(llm, task, [profile], labels, weight, smoothing).argmax())]
        return score_predictions(task, dev.golds, out)[metric]

    table = {w: dev_score(w) for w in GRID}
    best = max(GRID, key=lambda w: (sign * table[w], -w))
    return {"label_prior": best, "dev_scores": {str(w): round(s, 4) for w, s in table.items()},
            "prior_alone": round(dev_score(PRIOR_ALONE), 4), "metric": metric}


def resolve_auto(config: Any, task: Task, dev: Split | None, predict: Callable[[Sequence[Question]], list[Any]],
                 profile_of: Callable[[Question], Sequence[HistoryItem]] | None = None) -> dict[str, Any] | None:
    """If ``config.decode.label_prior == "auto"``, choose it on dev and write the number into the config.

    Applies to classification/rating with rank decoding and a dev split with golds; otherwise "auto"
    becomes 0 (the LLM alone) and the reason is returned. Returns the tuning report, or None if not "auto".
    """
    decode = config.decode
    if decode.label_prior != "auto":
        return None
    decode.label_prior = 0.0
    if task.kind == "generation" or decode.classify != "rank":
        return {"label_prior": 0.0, "reason": "the label prior needs a classification/rating task and rank decoding"}
    if dev is None or not dev.golds:
        return {"label_prior": 0.0, "reason": "no dev split with golds to choose the label prior on"}
    dev = dev.limit(config.train.dev_limit)
    profile_of = profile_of or (lambda q: q.profile)
    swap, decode.swap_history = decode.swap_history, False  # chosen on the users' own histories (swap is a
    try:  # prediction-time diagnostic of a trained run, never part of its training or tuning)
        report = tune_on_dev(predict, task, dev, [profile_of(q) for q in dev.questions], decode.prior_smoothing)
    finally:
        decode.swap_history = swap
    decode.label_prior = report["label_prior"]
    return report
