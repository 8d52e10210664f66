"""The user's vocabulary prior: a decoding bias toward the tokens of her own past outputs (generation)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pplug.backbones import BackboneConfig, PromptParts, load_backbone
from pplug.config import RunConfig, apply_override, validate
from pplug.data.records import HistoryItem, Question, Split
from pplug.errors import PPlugError
from pplug.kind_defaults import resolve_per_kind
from pplug.methods.base import Prediction
from pplug.resources import Resources
from pplug.runner import eval_run, load_run, train_run
from pplug.synth import SynthConfig, synthesize
from pplug.tasks import get_task
from pplug.vocab_prior import (
    FILE,
    GRID,
    VocabBackground,
    VocabBias,
    output_tokens,
    processor_for,
    resolve_auto,
    tune_on_dev,
    user_bias,
)

TASK = get_task("synth_title")  # output field "title"


class WordTokenizer:
    """Whitespace tokenizer: a word after a space and at the start get different ids (as BPE tokenizers do)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        pieces = [("Ġ" if i or text.startswith(" ") else "") + w for i, w in enumerate(text.split())]
        return {"input_ids": [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]}


def _items(*titles: str, prefix: str = "h") -> list[HistoryItem]:
    return [HistoryItem(id=f"{prefix}{i}", fields={"text": "x", "title": t}) for i, t in enumerate(titles)]


def test_output_tokens_count_both_forms_of_a_word():
    tok = WordTokenizer()
    ids = output_tokens(tok, "graph parsing")
    assert ids == {tok.vocab["Ġgraph"], tok.vocab["Ġparsing"], tok.vocab["graph"]}
    assert output_tokens(tok, "   ") == set()


def test_background_counts_each_distinct_item_once_and_round_trips(tmp_path):
    tok = WordTokenizer()
    shared = _items("the graph", "the model")
    questions = [Question("q1", "x", shared), Question("q2", "x", shared + _items("the end", prefix="o"))]
    bg = VocabBackground.from_questions(TASK, tok, questions, "tiny")
    assert bg.n_docs == 3  # q2 repeats q1's two items: counted once
    assert bg.df[tok.vocab["the"]] == 3 == bg.df[tok.vocab["Ġthe"]] and bg.df[tok.vocab["Ġgraph"]] == 1
    bg.save(tmp_path)
    again = VocabBackground.load(tmp_path)
    assert again.df == bg.df and again.n_docs == 3 and again.backbone == "tiny"
    assert VocabBackground.load(tmp_path / "missing") is None
    (tmp_path / FILE).write_text("{broken", encoding="utf-8")
    with pytest.raises(PPlugError, match=FILE):
        VocabBackground.load(tmp_path)


def test_user_bias_rewards_what_the_user_says_more_than_everyone():
    tok = WordTokenizer()
    background = [Question(f"b{i}", "x", _items(f"the {w} results", prefix=f"b{i}-"))
                  for i, w in enumerate(["graph", "speech", "vision", "tagging", "parsing", "music", "art", "law"])]
    bg = VocabBackground.from_questions(TASK, tok, background)
    profile = _items("the parsing results", "the parsing trees")
    v = len(tok.vocab) + 4
    bias = user_bias(TASK, tok, profile, bg, 1.0, v)
    parsing, results, trees = tok.vocab["Ġparsing"], tok.vocab["Ġresults"], tok.vocab["Ġtrees"]
    # parsing: in 2 of the user's 2 outputs, 1 of 8 background items -> log(1) - log(2/9)
    assert bias[parsing].item() == pytest.approx(math.log(9 / 2))
    assert bias[trees].item() == pytest.approx(math.log(1 / 2) - math.log(1 / 9))  # unseen in the background
    assert bias[results].item() == 0.0  # every background item has it: no more the user's than anyone's
    assert bias[tok.vocab["the"]].item() == 0.0
    assert torch.allclose(user_bias(TASK, tok, profile, bg, 0.25, v), 0.25 * bias)
    assert not user_bias(TASK, tok, [], bg, 1.0, v).any()
    assert not user_bias(TASK, tok, profile, bg, 0.0, v).any()


def test_the_bias_is_added_until_its_token_is_generated():
    bias = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    proc = VocabBias(bias)
    scores = torch.zeros(2, 3)
    assert torch.equal(proc(torch.zeros(2, 0, dtype=torch.long), scores), bias)
    spent = proc(torch.tensor([[1], [0]]), scores)  # row 0 already generated token 1
    assert spent.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    beams = proc(torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, 3))  # 2 beams per question, consecutive
    assert beams.tolist() == [[0.0, 2.0, 0.0]] * 2 + [[0.0, 0.0, 3.0]] * 2
    wide = proc(torch.tensor([[1], [4]]), torch.zeros(2, 5))  # a head wider than the bias: id 4 has no bonus
    assert wide.tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0]]  # and spends no other one
    assert torch.equal(proc.bias, bias)  # the stored bias is never changed in place


class Recording(VocabBias):
    def __call__(self, input_ids, scores):
        self.seen = input_ids.clone()
        return super().__call__(input_ids, scores)


def test_generate_applies_the_processor_at_every_step(tiny_backbone_dir):
    backbone = load_backbone(BackboneConfig(name_or_path=str(tiny_backbone_dir)))
    batch = backbone.build([PromptParts(text="a note about cats"), PromptParts(text="researchers tested")])
    word = backbone.tokenizer(" banana", add_special_tokens=False)["input_ids"][0]
    bias = torch.zeros(2, backbone.model.get_input_embeddings().weight.shape[0])
    bias[:, word] = 1e4  # forced at the first step, then spent
    proc = Recording(bias)
    with torch.no_grad():
        backbone.generate(batch, max_new_tokens=3, logits_processor=proc)
    generated = proc.seen[:, -2:]  # the ids the last step saw (t5 keeps its decoder start token in front)
    assert (generated[:, 0] == word).all() and proc.seen.shape[1] >= 2


def test_processor_needs_a_background_only_when_the_prior_is_on():
    tok = WordTokenizer()
    profiles = [_items("graph parsing")]
    assert processor_for(TASK, tok, profiles, None, 0.0, 10) is None
    assert processor_for(get_task("synth_topic"), tok, profiles, None, 1.0, 10) is None  # generation only
    with pytest.raises(PPlugError, match="decode.vocab_prior"):
        processor_for(TASK, tok, profiles, None, 1.0, 10)


def _dev(golds: list[str]) -> Split:
    qs = [Question(f"q{i}", "x", []) for i in range(len(golds))]
    return Split(TASK.name, "dev", qs, {q.id: g for q, g in zip(qs, golds, strict=True)}, "mem")


def test_tune_on_dev_picks_the_best_weight_and_ties_keep_the_smaller():
    dev = _dev(["graph parsing results", "speech tagging results"])
    state = {"w": None}

    def predict(qs):  # the prior helps up to .25, then hurts
        good = state["w"] in (0.25,)
        return [Prediction(q.id, dev.golds[q.id] if good else "unrelated words") for q in qs]

    report = tune_on_dev(predict, lambda w: state.update(w=w), TASK, dev)
    assert report["vocab_prior"] == 0.25 == state["w"] and set(report["dev_scores"]) == {str(w) for w in GRID}
    flat = tune_on_dev(lambda qs: [Prediction(q.id, "same") for q in qs], lambda w: state.update(w=w), TASK, dev)
    assert flat["vocab_prior"] == 0.0 == state["w"]


def test_resolve_auto_leaves_label_tasks_and_missing_dev_at_zero():
    cfg = RunConfig()
    cfg.decode.vocab_prior = "auto"
    report = resolve_auto(cfg, get_task("synth_topic"), None, lambda qs: [])
    assert cfg.decode.vocab_prior == 0.0 and "generation" in report["reason"]
    cfg.decode.vocab_prior = "auto"
    assert "dev" in resolve_auto(cfg, TASK, None, lambda qs: [])["reason"]
    cfg.decode.vocab_prior = 0.5
    assert resolve_auto(cfg, TASK, None, lambda qs: []) is None and cfg.decode.vocab_prior == 0.5


def test_resolve_auto_tunes_on_the_first_tune_limit_dev_questions_not_the_epoch_sample():
    dev = _dev([f"title number {i}" for i in range(7)])
    seen = []

    def predict(qs):
        seen.append(len(qs))
        return [Prediction(q.id, "title") for q in qs]

    cfg = RunConfig()
    cfg.decode.vocab_prior, cfg.decode.tune_limit, cfg.train.dev_limit = "auto", 5, 2
    report = resolve_auto(cfg, TASK, dev, predict)
    assert seen == [5] * len(GRID) and report["dev_questions"] == 5
    cfg.decode.vocab_prior, cfg.decode.tune_limit, seen[:] = "auto", None, []  # None: every dev question
    assert resolve_auto(cfg, TASK, dev, predict)["dev_questions"] == 7 and seen == [7] * len(GRID)
    cfg.decode.tune_limit = 0
    with pytest.raises(PPlugError, match="decode.tune_limit"):
        validate(cfg)


def test_per_kind_default_is_auto_for_pplug_generation_only():
    def resolved(method: str, task: str, ablation: str = "none"):
        cfg = RunConfig(method=method, task=task)
        cfg.plug.ablation = ablation
        resolve_per_kind(cfg)
        return cfg.decode.vocab_prior

    assert resolved("pplug", "synth_title") == "auto" == resolved("pplug-rag", "synth_title")
    assert resolved("rag-bm25", "synth_title") == 0.0 == resolved("zero-shot", "synth_title")
    assert resolved("pplug", "synth_title", "no_persona") == 0.0 == resolved("pplug", "synth_topic")
    cfg = RunConfig()
    apply_override(cfg, "decode.vocab_prior=0.25")
    assert validate(cfg).decode.vocab_prior == 0.25
    cfg.decode.vocab_prior = -1.0
    with pytest.raises(PPlugError, match="decode.vocab_prior"):
        validate(cfg)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=4, n_dev_users=2, n_test_users=2, min_profile=3, max_profile=6)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


def _cfg(data, backbone_dir, encoder_dir, method: str = "pplug") -> RunConfig:
    cfg = RunConfig(method=method, data=str(data))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(backbone_dir), str(encoder_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 2, False, 0, 2
    cfg.train.batch_size, cfg.decode.max_new_tokens = 4, 4
    return cfg


def test_training_counts_the_background_and_chooses_the_weight_on_dev(synth, tiny_llama_dir, tiny_bert_dir,
                                                                     tmp_path):
    res = Resources(None)
    report = train_run(_cfg(synth["synth_title"], tiny_llama_dir, tiny_bert_dir), tmp_path / "run", res)
    tuning = report["vocab_prior_tuning"]
    saved = RunConfig.load(tmp_path / "run" / "config.json").decode.vocab_prior
    assert saved == tuning["vocab_prior"] and isinstance(saved, float)
    assert set(tuning["dev_scores"]) == {str(w) for w in GRID}
    bg = json.loads((tmp_path / "run" / FILE).read_text())
    assert bg["n_docs"] > 0 and bg["df"]
    # any weight at evaluation (the swapped diagnostic biases toward the other user's words, as its persona)
    biased = eval_run(tmp_path / "run", synth["synth_title"], "test", resources=res,
                      overrides=["decode.vocab_prior=1.0"])
    assert set(biased["metrics"]) == {"rouge-1", "rouge-L"}
    swapped = eval_run(tmp_path / "run", synth["synth_title"], "test", resources=res, swap_history=True,
                       overrides=["decode.vocab_prior=1.0"])
    assert swapped["questions"] == biased["questions"]
    again = eval_run(tmp_path / "run", synth["synth_title"], "test", resources=res,
                     overrides=["decode.vocab_prior=auto"])
    assert set(again["vocab_prior_tuning"]["dev_scores"]) == {str(w) for w in GRID}
    _, method = load_run(tmp_path / "run", res)
    assert method.vocab is not None and method.vocab.n_docs == bg["n_docs"]
    (tmp_path / "copy").mkdir()
    method.save(tmp_path / "copy")  # save_pretrained: the background travels with the weights
    assert json.loads((tmp_path / "copy" / FILE).read_text()) == bg


def test_a_method_without_the_background_says_so(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    cfg = _cfg(synth["synth_title"], tiny_llama_dir, tiny_bert_dir, "rag-bm25")
    cfg.decode.vocab_prior = 1.0
    with pytest.raises(PPlugError, match="decode.vocab_prior=1.0 needs a vocabulary background"):
        train_run(cfg, tmp_path / "run", Resources(None))


def test_grid_script_sweeps_a_run_without_background(synth, tiny_llama_dir, tiny_bert_dir, tmp_path, monkeypatch,
                                                     capsys):
    import importlib.util
    import shutil
    import sys
    from pathlib import Path

    cfg = _cfg(synth["synth_title"], tiny_llama_dir, tiny_bert_dir)
    cfg.decode.vocab_prior = 0.0
    train_run(cfg, tmp_path / "run", Resources(None))
    (tmp_path / "run" / FILE).unlink()  # a run trained before the prior existed
    path = Path(__file__).resolve().parents[1] / "scripts" / "vocab_prior_grid.py"
    spec = importlib.util.spec_from_file_location("vocab_prior_grid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["vocab_prior_grid.py", str(tmp_path / "run"), "--data", str(synth["synth_title"]),
                                      "--split", "dev", "--weights", "0,1", "--out", str(tmp_path / "grid")])
    module.main()
    out = capsys.readouterr().out
    assert "counted from" in out and "another user's" in out
    grid = json.loads((tmp_path / "grid" / "dev_grid.json").read_text())
    assert set(grid) == {"0,own", "0,swap", "1,own", "1,swap"}
    assert not (tmp_path / "run" / FILE).exists()  # read-only on the run
    shutil.rmtree(tmp_path / "grid")
