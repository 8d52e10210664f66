"""The user's label prior combined with the LLM's label scores (product of experts)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from pplug.config import ConfigError, RunConfig, validate
from pplug.data import load_split
from pplug.data.records import HistoryItem, Question, Split
from pplug.heuristics import user_majority
from pplug.label_prior import (
    PRIOR_ALONE,
    SHIFT_GRID,
    combine,
    label_marginal,
    prior_log_probs,
    resolve_auto,
    shift_vector,
    tune_on_dev,
)
from pplug.methods.base import Prediction
from pplug.resources import Resources
from pplug.runner import eval_run, train_run
from pplug.synth import SynthConfig, synthesize
from pplug.tasks import get_task

TASK = get_task("synth_topic")  # labels: sports music science travel food politics; output field "category"
LABELS = list(TASK.labels)


def _items(*cats: str) -> list[HistoryItem]:
    return [HistoryItem(id=f"h{i}", fields={"text": "x", "category": c}) for i, c in enumerate(cats)]


def test_prior_is_smoothed_label_frequency():
    lp = prior_log_probs(TASK, _items("music", "music", "food", "not-a-label"), LABELS, smoothing=1.0)
    # counted: music 2, food 1 (the unknown label is ignored); + 1 each over 6 labels -> total 3 + 6 = 9
    expected = [1 / 9, 3 / 9, 1 / 9, 1 / 9, 2 / 9, 1 / 9]
    assert lp.exp().tolist() == pytest.approx(expected)
    assert prior_log_probs(TASK, [], LABELS, 0.0).exp().tolist() == pytest.approx([1 / 6] * 6)


def test_combine_weights_the_experts():
    scores = torch.tensor([[-1.0, -3.0, -3.0, -3.0, -3.0, -3.0]])  # the LLM prefers "sports"
    profiles = [_items("food", "food", "music")]
    llm = combine(scores, TASK, profiles, LABELS, 0.0, 1.0)
    assert torch.allclose(llm, torch.log_softmax(scores, -1))
    assert LABELS[int(llm.argmax())] == "sports"
    alone = combine(scores, TASK, profiles, LABELS, PRIOR_ALONE, 1.0)
    assert LABELS[int(alone.argmax())] == "food" == user_majority(TASK, Question("q", "x", profiles[0]), "")
    mixed = combine(scores, TASK, profiles, LABELS, 1.0, 1.0)
    expected = torch.log_softmax(scores, -1) + prior_log_probs(TASK, profiles[0], LABELS, 1.0)
    assert torch.allclose(mixed, expected)


def _dev(golds: list[str], profiles: list[list[HistoryItem]]) -> Split:
    qs = [Question(f"q{i}", "note", p) for i, p in enumerate(profiles)]
    return Split(TASK.name, "dev", qs, {q.id: g for q, g in zip(qs, golds, strict=True)}, "mem")


def test_tune_on_dev_picks_the_prior_only_when_it_helps():
    # Users whose gold is their most frequent history label; the LLM is uninformative (ties -> label 0).
    cats = ["music", "food", "travel", "science"]
    profiles = [_items(c, c, "sports") for c in cats]
    flat = [dict.fromkeys(LABELS, 0.0) for _ in cats]

    def predict(qs):
        return [Prediction(q.id, "sports", label_scores=s) for q, s in zip(qs, flat, strict=True)]

    report = tune_on_dev(predict, TASK, _dev(cats, profiles), profiles, 1.0)
    assert report["label_prior"] > 0 and report["dev_scores"]["0.0"] == 0.0 and report["prior_alone"] == 1.0
    # A sharp, always-right LLM and a misleading prior: the LLM alone wins (ties go to the smaller weight).
    right = [{lab: 0.0 if lab == c else -20.0 for lab in LABELS} for c in cats]

    def predict_right(qs):
        return [Prediction(q.id, c, label_scores=s) for q, c, s in zip(qs, cats, right, strict=True)]

    misleading = [_items("sports", "sports", "sports") for _ in cats]
    report = tune_on_dev(predict_right, TASK, _dev(cats, misleading), misleading, 1.0)
    assert report["label_prior"] == 0.0 and report["dev_scores"]["0.0"] == 1.0


def test_resolve_auto_leaves_generation_and_generate_decoding_alone():
    cfg = RunConfig()
    cfg.decode.label_prior = "auto"
    report = resolve_auto(cfg, get_task("synth_title"), None, lambda qs: [])
    assert cfg.decode.label_prior == 0.0 and "rank decoding" in report["reason"]
    assert resolve_auto(cfg, TASK, None, lambda qs: []) is None  # already a number: nothing to do
    bad = RunConfig()
    bad.decode.label_prior = "often"
    with pytest.raises(ConfigError, match="decode.label_prior"):
        validate(bad)


def test_resolve_auto_scores_the_first_tune_limit_dev_questions():
    cats = ["music", "food", "travel", "science", "music", "food"]
    profiles = [_items(c, c, "sports") for c in cats]
    seen = []

    def predict(qs):
        seen.append(len(qs))
        return [Prediction(q.id, "sports", label_scores=dict.fromkeys(LABELS, 0.0)) for q in qs]

    cfg = RunConfig()
    cfg.decode.label_prior, cfg.decode.tune_limit, cfg.train.dev_limit = "auto", 4, 1
    report = resolve_auto(cfg, TASK, _dev(cats, profiles), predict)
    assert seen == [4] and report["dev_questions"] == 4 and cfg.decode.label_prior > 0


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(n_train_users=3, n_dev_users=3, n_test_users=3,
                                                                    min_profile=4, max_profile=6))


def _cfg(synth, tiny_llama_dir, tiny_bert_dir, prior) -> RunConfig:
    cfg = RunConfig(method="zero-shot", data=str(synth["synth_topic"]))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_llama_dir), str(tiny_bert_dir)
    cfg.decode.classify, cfg.decode.label_prior = "rank", prior
    return cfg


def test_prior_alone_predicts_the_users_majority_label(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    res = Resources(None)
    train_run(_cfg(synth, tiny_llama_dir, tiny_bert_dir, PRIOR_ALONE), tmp_path / "run", res)
    eval_run(tmp_path / "run", str(synth["synth_topic"]), "test", resources=res)
    preds = {g["id"]: g["output"] for g in json.loads((tmp_path / "run" / "preds_test.json").read_text())["golds"]}
    test = load_split(str(synth["synth_topic"]), "test")
    for q in test.questions:
        counts = Counter(it.fields["category"] for it in q.profile)
        assert counts[preds[q.id]] == max(counts.values())  # a most frequent label (the LLM breaks ties)


def test_auto_prior_is_chosen_on_dev_and_saved(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    res = Resources(None)
    report = train_run(_cfg(synth, tiny_llama_dir, tiny_bert_dir, "auto"), tmp_path / "run", res)
    tuning = report["label_prior_tuning"]
    saved = RunConfig.load(tmp_path / "run" / "config.json").decode.label_prior
    assert saved == tuning["label_prior"] and isinstance(saved, float) and not math.isnan(saved)
    assert set(tuning["dev_scores"]) == {"0.0", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}


def test_label_prior_override_parses_numbers_and_auto():
    from pplug.config import apply_override

    cfg = RunConfig()
    apply_override(cfg, "decode.label_prior=4")
    assert cfg.decode.label_prior == 4.0 and not isinstance(cfg.decode.label_prior, str)
    apply_override(cfg, "decode.label_prior=auto")
    assert validate(cfg).decode.label_prior == "auto"


def test_label_marginal_averages_each_label_over_the_rows_that_allow_it():
    rows = [{"a": math.log(0.8), "b": math.log(0.2)}, {"a": math.log(0.4), "b": math.log(0.6)},
            {"a": math.log(0.5), "c": math.log(0.5)}]  # the third question allows a and c only
    m = label_marginal(rows)
    assert {k: math.exp(v) for k, v in m.items()} == pytest.approx({"a": (0.8 + 0.4 + 0.5) / 3, "b": 0.4, "c": 0.5})
    vec = shift_vector(m, ["b", "new", "a"])  # an unseen label sits at the mean of the known ones: no shift
    assert vec[1].item() == pytest.approx((m["b"] + m["a"]) / 2)
    assert shift_vector(None, ["a", "b"]).tolist() == [0.0, 0.0]


def test_shift_divides_out_the_llms_own_label_marginal():
    scores = torch.tensor([[-1.0, -2.0, -3.0, -3.0, -3.0, -3.0]])
    marginal = {"sports": math.log(0.5), "music": math.log(0.1)}
    shifted = combine(scores, TASK, [[]], LABELS, 0.0, 1.0, 1.0, marginal)
    expected = torch.log_softmax(scores, -1) - shift_vector(marginal, LABELS)
    assert torch.allclose(shifted, expected)
    assert LABELS[int(shifted.argmax())] == "music"  # sports' lead came from the LLM's bias towards it
    assert torch.allclose(combine(scores, TASK, [[]], LABELS, 0.0, 1.0, 0.0, marginal),
                          torch.log_softmax(scores, -1))  # gamma 0: unchanged


def test_tune_on_dev_finds_a_biased_llm_and_stores_its_marginal():
    # The LLM always puts +3 on "sports" and +1 on the right label: alone it answers sports every time.
    cats = ["music", "food", "travel", "science", "music", "politics"]
    biased = [{lab: 3.0 * (lab == "sports") + 1.0 * (lab == c) for lab in LABELS} for c in cats]
    biased = [dict(zip(s, torch.log_softmax(torch.tensor(list(s.values())), -1).tolist(), strict=True))
              for s in biased]
    profiles = [[] for _ in cats]  # no history: the prior is uniform and cannot help

    def predict(qs):
        return [Prediction(q.id, "sports", label_scores=s) for q, s in zip(qs, biased, strict=True)]

    flat_only = tune_on_dev(predict, TASK, _dev(cats, profiles), profiles, 1.0)
    assert flat_only["label_shift"] == 0.0 and flat_only["dev_scores"]["0.0"] == 0.0 and "dev_grid" not in flat_only
    report = tune_on_dev(predict, TASK, _dev(cats, profiles), profiles, 1.0, shifts=SHIFT_GRID)
    assert report["label_shift"] > 0 and report["dev_scores"]["0.0"] == 1.0
    assert report["label_marginal"]["sports"] > report["label_marginal"]["music"]
    assert set(report["dev_grid"]) == {f"{w},{g}" for w in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0) for g in SHIFT_GRID}


def test_label_marginal_is_a_typed_config_field():
    cfg = RunConfig()
    cfg.decode.label_shift, cfg.decode.label_marginal = 1.0, {"sports": -0.5, "music": -2.0}
    validate(cfg)
    cfg.decode.label_marginal = {"sports": "high"}
    with pytest.raises(ConfigError, match="decode.label_marginal"):
        validate(cfg)
    cfg.decode.label_marginal, cfg.decode.label_shift = None, -1.0
    with pytest.raises(ConfigError, match="decode.label_shift"):
        validate(cfg)


def test_auto_shift_is_chosen_on_dev_and_saved(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    cfg = _cfg(synth, tiny_llama_dir, tiny_bert_dir, "auto")
    cfg.method, cfg.decode.label_shift = "rag-bm25", "auto"
    report = train_run(cfg, tmp_path / "run", Resources(None))["label_prior_tuning"]
    saved = RunConfig.load(tmp_path / "run" / "config.json").decode
    assert (saved.label_prior, saved.label_shift) == (report["label_prior"], report["label_shift"])
    assert set(report["dev_grid"]) and (saved.label_marginal is not None) == (saved.label_shift > 0)


def test_eval_with_auto_rechooses_on_dev_without_changing_the_run(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    res = Resources(None)
    train_run(_cfg(synth, tiny_llama_dir, tiny_bert_dir, 0.0), tmp_path / "run", res)
    before = (tmp_path / "run" / "config.json").read_text()
    report = eval_run(tmp_path / "run", str(synth["synth_topic"]), "test", resources=res,
                      overrides=["decode.label_prior=auto", "decode.label_shift=auto"])
    tuning = report["label_prior_tuning"]
    assert tuning["label_prior"] in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0) and tuning["label_shift"] in SHIFT_GRID
    assert len(tuning["dev_grid"]) == 21 and (tmp_path / "run" / "config.json").read_text() == before


def test_label_prior_grid_script_scores_every_cell():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "label_prior_grid.py"
    spec = importlib.util.spec_from_file_location("label_prior_grid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cats = ["music", "food"]
    profiles = [_items("music", "music"), _items("sports")]
    rows = [{lab: 1.0 * (lab == "sports") for lab in LABELS} for _ in cats]  # the LLM always says sports
    table = module.grid_scores(TASK, _dev(cats, profiles), rows, label_marginal(rows), 1.0, (0.0, PRIOR_ALONE),
                               (0.0, 1.0))
    assert set(table) == {(0.0, 0.0), (0.0, 1.0), (PRIOR_ALONE, 0.0), (PRIOR_ALONE, 1.0)}
    assert table[0.0, 0.0]["accuracy"] == 0.0 and table[PRIOR_ALONE, 0.0]["accuracy"] == 0.5  # music user right
