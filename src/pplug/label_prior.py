"""The user's label prior, combined with the LLM's label scores as a product of experts.

For a classification (or rating) question of user u with label set Y (|Y| = L):

    log p(y | x, u) = log_softmax_y( s_LLM(y | x, u) ) - gamma * log m(y) + alpha * log p_u(y) + const
    p_u(y)          = (count_u(y) + beta) / (n_u + beta * L)
    m(y)            = mean over dev questions of softmax_y( s_LLM(y | x, u) )

``s_LLM`` are the backbone's summed label log-likelihoods from rank decoding (``score_options``),
``count_u(y)`` is how often y is the output field of the user's history items, ``beta`` is Dirichlet
smoothing (``decode.prior_smoothing``) and ``alpha`` the prior's weight (``decode.label_prior``).
alpha = 0 is the LLM alone; alpha -> inf is the user's most frequent label (the user-majority heuristic,
ties broken by the LLM). With ``decode.label_prior = "auto"`` a trained method picks alpha on dev
(`tune_on_dev`) and stores the chosen number in its run config.

``m(y)`` is the LLM's own label marginal (how often, on average, it puts mass on y over the dev inputs, no
golds needed). gamma = 1 divides it out: Bayes' rule for a prior shift (Saerens et al., 2002), replacing the
label frequencies the LLM has absorbed by the user's own; gamma = 0 (the default) leaves the LLM's scores as
they are. ``decode.label_shift`` is gamma ("auto": chosen on dev together with alpha), and
``decode.label_marginal`` the log m(y) it estimated (saved in the run config).
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
from pplug.tuning import tuning_dev

GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # alpha values tried on dev by "auto"
SHIFT_GRID = (0.0, 0.5, 1.0)  # gamma values tried on dev by decode.label_shift="auto"
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


def label_marginal(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """log m(y): the log of the LLM's average probability of each label over questions (rows of label ->
    log-prob, each over the labels its question allows); a label is averaged over the rows that allow it."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for label, logp in row.items():
            sums.setdefault(label, []).append(math.exp(logp))
    return {label: math.log(max(sum(ps) / len(ps), 1e-12)) for label, ps in sums.items()}


def shift_vector(marginal: dict[str, float] | None, labels: Sequence[str]) -> Tensor:
    """[L] log m(y) for ``labels``; a label the marginal never saw gets the mean of the known ones (no shift
    relative to them); no marginal at all gives zeros."""
    if not marginal:
        return torch.zeros(len(labels))
    known = [marginal[lab] for lab in labels if lab in marginal]
    fill = sum(known) / len(known) if known else 0.0
    return torch.tensor([marginal.get(lab, fill) for lab in labels], dtype=torch.float32)


def combine(scores: Tensor, task: Task, profiles: Sequence[Sequence[HistoryItem]], labels: Sequence[str],
            weight: float, smoothing: float, shift: float = 0.0,
            marginal: dict[str, float] | None = None) -> Tensor:
    """[b, L] product-of-experts log scores from [b, L] LLM label log-likelihoods and the users' priors.

    Args:
        shift: gamma, the weight of the LLM's own label marginal divided out (``marginal``: label -> log m).
    """
    llm = torch.log_softmax(scores.float(), dim=-1)
    if shift and marginal:
        llm = llm - shift * shift_vector(marginal, labels).to(llm.device)
    if weight == 0:
        return llm
    prior = torch.stack([prior_log_probs(task, p, labels, smoothing) for p in profiles]).to(llm.device)  # [b, L]
    return llm + weight * prior


def choose_labels(questions: Sequence[Question], label_scores: Sequence[dict[str, float]], task: Task,
                  profiles: Sequence[Sequence[HistoryItem]], weight: float, smoothing: float, shift: float = 0.0,
                  marginal: dict[str, float] | None = None) -> dict[str, str]:
    """{question id: label} from stored LLM-alone label log-probs (one dict per question, over the labels it
    allows), combined offline with each profile's prior and the marginal as `combine` does at decoding."""
    out = {}
    for q, row, profile in zip(questions, label_scores, profiles, strict=True):
        labels = list(row)
        scores = combine(torch.tensor([list(row.values())]), task, [profile], labels, weight, smoothing, shift,
                         marginal)
        out[q.id] = labels[int(scores.argmax())]
    return out


def tune_on_dev(predict: Callable[[Sequence[Question]], list[Any]], task: Task, dev: Split,
                profiles: Sequence[Sequence[HistoryItem]], smoothing: float,
                weights: Sequence[float] = GRID, shifts: Sequence[float] = (0.0,)) -> dict[str, Any]:
    """Choose alpha (and gamma) on dev: one prediction pass with the LLM alone, then the grid offline.

    Args:
        predict: the method's predict (with ``decode.label_prior = 0``); its predictions carry
            ``label_scores`` (label -> LLM log-prob over the labels that question allows).
        profiles: the history each dev question's prior is taken from (its own profile).
        weights: the alpha values tried (`GRID`; a fixed alpha: one value).
        shifts: the gamma values tried (`SHIFT_GRID` for "auto"; the default tries none).

    Returns:
        ``{"label_prior": alpha, "label_shift": gamma, "label_marginal": {label: log m} (when gamma was
        tuned), "dev_scores": {alpha: score} (at the chosen gamma), "dev_grid": {"alpha,gamma": score},
        "prior_alone": score, "metric": name}``. Ties go to the smaller gamma, then the smaller alpha: the
        LLM alone unless the prior helps.
    """
    preds = predict(dev.questions)
    if any(p.label_scores is None for p in preds):
        raise ValueError("tune_on_dev needs predictions with label_scores (rank decoding)")
    metric = MAIN_METRIC[task.kind]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    rows = [p.label_scores for p in preds]
    marginal = label_marginal(rows)

    def dev_score(weight: float, shift: float = 0.0) -> float:
        out = choose_labels(dev.questions, rows, task, profiles, weight, smoothing, shift, marginal)
        return score_predictions(task, dev.golds, out)[metric]

    grid = {(w, g): dev_score(w, g) for g in shifts for w in weights}
    best_w, best_g = max(grid, key=lambda wg: (sign * grid[wg], -wg[1], -wg[0]))
    report = {"label_prior": best_w, "label_shift": best_g,
              "dev_scores": {str(w): round(grid[w, best_g], 4) for w in weights},
              "prior_alone": round(dev_score(PRIOR_ALONE), 4), "metric": metric}
    if len(shifts) > 1 or shifts[0]:
        report["dev_grid"] = {f"{w},{g}": round(v, 4) for (w, g), v in grid.items()}
        report["label_marginal"] = {k: round(v, 6) for k, v in marginal.items()}
    return report


def resolve_auto(config: Any, task: Task, dev: Split | None, predict: Callable[[Sequence[Question]], list[Any]],
                 profile_of: Callable[[Question], Sequence[HistoryItem]] | None = None) -> dict[str, Any] | None:
    """Choose ``decode.label_prior`` and/or ``decode.label_shift`` on dev where they are "auto", and write the
    numbers (and the LLM's label marginal, when gamma > 0) into the config.

    Applies to classification/rating with rank decoding and a dev split with golds; otherwise "auto"
    becomes 0 (the LLM alone) and the reason is returned. Returns the tuning report, or None if neither
    is "auto".
    """
    decode = config.decode
    prior_auto, shift_auto = decode.label_prior == "auto", decode.label_shift == "auto"
    if not (prior_auto or shift_auto):
        return None
    weights = GRID if prior_auto else (float(decode.label_prior or 0.0),)
    shifts = SHIFT_GRID if shift_auto else (float(decode.label_shift or 0.0),)
    if prior_auto:
        decode.label_prior = 0.0
    if shift_auto:
        decode.label_shift = 0.0
    reason = None
    if task.kind == "generation" or decode.classify != "rank":
        reason = "the label prior needs a classification/rating task and rank decoding"
    elif dev is None or not dev.golds:
        reason = "no dev split with golds to choose the label prior on"
    if reason:
        return {"label_prior": decode.label_prior, "label_shift": decode.label_shift, "reason": reason}
    profile_of = profile_of or (lambda q: q.profile)
    decode.label_prior = decode.label_shift = 0.0  # the dev pass is the LLM alone; the grid runs offline
    with tuning_dev(decode, dev) as dev:  # the first decode.tune_limit questions, the users' own histories
        report = tune_on_dev(predict, task, dev, [profile_of(q) for q in dev.questions], decode.prior_smoothing,
                             weights, shifts)
    report["dev_questions"] = len(dev.questions)
    decode.label_prior, decode.label_shift = report["label_prior"], report["label_shift"]
    if report["label_shift"]:
        decode.label_marginal = report["label_marginal"]
    return report
