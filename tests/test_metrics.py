"""Tests for pplug.metrics: hand-computed values, and scikit-learn / rouge-score on random inputs."""

from __future__ import annotations

import math

import pytest

from pplug import metrics
from pplug.metrics import (
    HIGHER_IS_BETTER,
    MAIN_METRIC,
    METRIC_KINDS,
    classification_metrics,
    generation_metrics,
    rating_metrics,
    score,
)

# ---------------------------------------------------------------- classification


def test_classification_hand_computed_macro_f1() -> None:
    # labels [a,b,c]; golds [a,a,b,c]; preds [a,b,b,x] (x unknown -> -1, wrong)
    # accuracy: matches at positions 0 and 2 -> 2/4 = 0.5
    # a: tp=1, predicted 1, gold 2 -> P=1, R=1/2, F=2*(1*1/2)/(3/2)=2/3
    # b: tp=1, predicted 2, gold 1 -> P=1/2, R=1, F=2/3
    # c: tp=0 -> F=0
    # macro-F1 = (2/3 + 2/3 + 0) / 3 = 4/9
    out = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "x"], ["a", "b", "c"])
    assert out == {"accuracy": pytest.approx(0.5), "f1": pytest.approx(4 / 9)}


def test_classification_unseen_label_counts_zero() -> None:
    # labels [a,b,c,d]; golds == preds == [a,b]; c and d never appear -> F1 0 each
    # accuracy = 2/2 = 1; macro-F1 = (1 + 1 + 0 + 0) / 4 = 0.5
    out = classification_metrics(["a", "b"], ["a", "b"], ["a", "b", "c", "d"])
    assert out["accuracy"] == pytest.approx(1.0)
    assert out["f1"] == pytest.approx(0.5)


def test_classification_case_sensitive() -> None:
    # "politics" is not in the label list -> -1 -> wrong; accuracy 0/1
    # Politics: tp=0 -> F1 0; Sports: no gold, no pred -> 0; macro-F1 = 0
    out = classification_metrics(["Politics"], ["politics"], ["Politics", "Sports"])
    assert out == {"accuracy": 0.0, "f1": 0.0}


def test_classification_strips_whitespace() -> None:
    # "  [1]\n" -> "[1]", " [2] " -> "[2]": both correct -> accuracy 1
    # [1]: P=R=1 -> F1 1; [2]: P=R=1 -> F1 1; macro-F1 = 1
    out = classification_metrics(["[1]", " [2] "], ["  [1]\n", "[2]"], ["[1]", "[2]"])
    assert out == {"accuracy": 1.0, "f1": 1.0}


def test_classification_unknown_prediction_is_wrong() -> None:
    # golds [a,b]; preds ["a", "I think b"] -> second is -1 -> accuracy 1/2
    # a: P=R=1 -> 1; b: tp=0 -> 0; macro-F1 = 1/2
    out = classification_metrics(["a", "b"], ["a", "I think b"], ["a", "b"])
    assert out == {"accuracy": pytest.approx(0.5), "f1": pytest.approx(0.5)}


def test_classification_gold_outside_labels_raises() -> None:
    with pytest.raises(ValueError, match=r"'zzz'.*position 1"):
        classification_metrics(["a", "zzz"], ["a", "a"], ["a", "b"])


# ---------------------------------------------------------------- rating


def test_rating_unparsable_predictions_hand_computed() -> None:
    # gold 2, pred "x":    |1-2|=1 > |5-2|=3? no  -> 5.0, error 3
    # gold 4, pred "oops": |1-4|=3 > |5-4|=1? yes -> 1.0, error 3
    # gold 3, pred "":     |1-3|=2 > |5-3|=2? no  -> 5.0, error 2
    # gold 5, pred " 4.5 ": parses -> error 0.5
    # MAE  = (3 + 3 + 2 + 0.5) / 4 = 8.5 / 4 = 2.125
    # RMSE = sqrt((9 + 9 + 4 + 0.25) / 4) = sqrt(5.5625)
    out = rating_metrics(["2", "4", "3", "5"], ["x", "oops", "", " 4.5 "])
    assert out["mae"] == pytest.approx(2.125)
    assert out["rmse"] == pytest.approx(math.sqrt(5.5625))


def test_rating_perfect_and_simple() -> None:
    # errors |2-1|=1, |3-3|=0 -> MAE 1/2; RMSE sqrt((1+0)/2) = sqrt(0.5)
    out = rating_metrics([" 1", "3"], ["2", "3.0 "])
    assert out == {"mae": pytest.approx(0.5), "rmse": pytest.approx(math.sqrt(0.5))}


def test_rating_bad_gold_raises() -> None:
    with pytest.raises(ValueError, match="position 1"):
        rating_metrics(["3", "three"], ["3", "3"])


# ---------------------------------------------------------------- generation


def test_generation_subset_sentence() -> None:
    # gold "the cat sat on the mat" (6 tokens), pred "the cat on mat" (4 tokens)
    # unigram overlap: the(min 2,1)=1 + cat + on + mat = 4 -> P=4/4, R=4/6
    # F = 2*1*(2/3) / (1 + 2/3) = (4/3)/(5/3) = 0.8
    # LCS "the cat on mat" = 4 -> same P, R -> rouge-L 0.8
    out = generation_metrics(["the cat sat on the mat"], ["the cat on mat"])
    assert out == {"rouge-1": pytest.approx(0.8), "rouge-L": pytest.approx(0.8)}


def test_generation_tokenizer_lowercases_and_drops_punctuation() -> None:
    # "Hello, World!" -> tokens [hello, world] == pred tokens -> 1.0 for both
    out = generation_metrics(["  Hello, World!  "], ["hello world"])
    assert out == {"rouge-1": pytest.approx(1.0), "rouge-L": pytest.approx(1.0)}


def test_generation_reordered_rouge_l_differs() -> None:
    # gold "the cat sat", pred "sat the cat": all unigrams match -> rouge-1 = 1
    # LCS = "the cat" (2 tokens) -> P=R=2/3 -> rouge-L = 2/3
    out = generation_metrics(["the cat sat"], ["sat the cat"])
    assert out["rouge-1"] == pytest.approx(1.0)
    assert out["rouge-L"] == pytest.approx(2 / 3)


def test_generation_plain_mean_over_examples() -> None:
    # example 1: identical -> 1.0 / 1.0; example 2: no overlap -> 0 / 0
    # example 3: the reordered case above -> 1.0 / (2/3)
    # rouge-1 = (1 + 0 + 1) / 3 = 2/3; rouge-L = (1 + 0 + 2/3) / 3 = 5/9
    out = generation_metrics(["a b", "dog", "the cat sat"], ["a b", "cat", "sat the cat"])
    assert out["rouge-1"] == pytest.approx(2 / 3)
    assert out["rouge-L"] == pytest.approx(5 / 9)


def test_scorer_is_cached() -> None:
    assert metrics._get_scorer() is metrics._get_scorer()


# ---------------------------------------------------------------- dispatch / constants


def test_score_dispatch() -> None:
    assert score("classification", ["a"], ["a"], labels=["a", "b"]) == {"accuracy": 1.0, "f1": 0.5}
    assert score("rating", ["3"], ["4"]) == {"mae": 1.0, "rmse": 1.0}
    assert score("generation", ["x y"], ["x y"]) == {"rouge-1": 1.0, "rouge-L": 1.0}


def test_score_errors() -> None:
    with pytest.raises(ValueError, match="labels"):
        score("classification", ["a"], ["a"])
    with pytest.raises(ValueError, match="classification, rating, generation"):
        score("bogus", ["a"], ["a"])
    with pytest.raises(ValueError, match="length"):
        score("rating", ["1", "2"], ["1"])
    with pytest.raises(ValueError, match="empty"):
        score("generation", [], [])
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], ["a"])


def test_constants_consistent() -> None:
    assert METRIC_KINDS == ("classification", "rating", "generation")
    assert set(MAIN_METRIC) == set(METRIC_KINDS)
    assert MAIN_METRIC == {"classification": "accuracy", "rating": "mae", "generation": "rouge-1"}
    assert all(m in HIGHER_IS_BETTER for m in MAIN_METRIC.values())
    assert HIGHER_IS_BETTER["mae"] is False and HIGHER_IS_BETTER["rouge-L"] is True


# ---------------------------------------------------------------- against independent implementations


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_scikit_learn_on_random_inputs(seed: int) -> None:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    labels = [f"label {i}" for i in range(int(rng.integers(2, 8)))]
    n = int(rng.integers(1, 60))
    golds = [labels[i] for i in rng.integers(0, len(labels), n)]
    pool = labels + ["not a label", "Label 0", ""]  # unknown predictions map to -1 (always wrong)
    preds = [pool[i] for i in rng.integers(0, len(pool), n)]
    out = classification_metrics(golds, preds, labels)
    y_true = [labels.index(g) for g in golds]
    y_pred = [labels.index(p) if p in labels else -1 for p in preds]
    ref = f1_score(y_true, y_pred, labels=list(range(len(labels))), average="macro", zero_division=0)
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert out["f1"] == pytest.approx(ref)


@pytest.mark.parametrize("seed", range(5))
def test_generation_matches_rouge_score_on_random_inputs(seed: int) -> None:
    import random

    from rouge_score import rouge_scorer

    rng = random.Random(seed)
    vocab = ["the", "Cat", "sat", "on", "mat", "dog", "ran,", "park!", "a", "new", "battery", "2024", "é"]
    golds = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(20)]
    preds = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(20)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    ref = [scorer.score(g.strip(), p.strip()) for g, p in zip(golds, preds, strict=True)]
    out = generation_metrics(golds, preds)
    assert out["rouge-1"] == pytest.approx(sum(r["rouge1"].fmeasure for r in ref) / len(ref))
    assert out["rouge-L"] == pytest.approx(sum(r["rougeL"].fmeasure for r in ref) / len(ref))


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", " infinity "])
def test_rating_non_finite_prediction_is_worst_case(bad: str) -> None:
    # gold 2 -> worst case 5 (error 3); gold 4 -> worst case 1 (error 3)
    out = rating_metrics(["2", "4"], [bad, bad])
    assert out == {"mae": pytest.approx(3.0), "rmse": pytest.approx(3.0)}


def test_rating_non_finite_gold_raises() -> None:
    with pytest.raises(ValueError, match="position 0 is not a finite number"):
        rating_metrics(["nan"], ["3"])


@pytest.mark.parametrize("seed", range(3))
def test_per_question_values_average_to_the_metric(seed: int) -> None:
    import random

    from pplug.metrics import per_question

    rng = random.Random(seed)
    labels = ["a", "b", "c", " d"]
    golds = [rng.choice(["a", "b", "c"]) for _ in range(20)]
    preds = [rng.choice(["a", "b", "c", "zz", " b "]) for _ in range(20)]
    assert per_question("classification", golds, preds, labels).mean() == pytest.approx(
        score("classification", golds, preds, labels)["accuracy"])
    r_golds = [str(rng.randint(1, 5)) for _ in range(20)]
    r_preds = [rng.choice(["1", "2.5", "5", "nan", "inf", "x"]) for _ in range(20)]
    assert per_question("rating", r_golds, r_preds).mean() == pytest.approx(score("rating", r_golds, r_preds)["mae"])
    words = "the cat sat on a mat with its hat".split()
    g_golds = [" ".join(rng.sample(words, 4)) for _ in range(10)]
    g_preds = [" ".join(rng.sample(words, 3)) for _ in range(10)]
    full = score("generation", g_golds, g_preds)
    assert per_question("generation", g_golds, g_preds).mean() == pytest.approx(full["rouge-1"])
    assert per_question("generation", g_golds, g_preds, metric="rouge-L").mean() == pytest.approx(full["rouge-L"])


def test_per_question_refuses_metrics_that_are_not_means() -> None:
    from pplug.metrics import per_question

    with pytest.raises(ValueError, match="not a per-question mean"):
        per_question("classification", ["a"], ["a"], ["a"], metric="f1")
    with pytest.raises(ValueError, match="not a per-question mean"):
        per_question("rating", ["1"], ["1"], metric="rmse")
