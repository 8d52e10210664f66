"""Per-task-kind defaults: None fields take their kind's value once the task is known; explicit values win."""

from __future__ import annotations

import json

import pytest

from pplug.config import RunConfig, apply_override, validate
from pplug.errors import PPlugError
from pplug.kind_defaults import PER_KIND, PER_KIND_FIELDS, resolve_per_kind
from pplug.resources import Resources
from pplug.runner import load_run, train_run
from pplug.synth import SynthConfig, synthesize


def _get(cfg: RunConfig, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def test_fresh_config_leaves_per_kind_fields_open():
    cfg = validate(RunConfig())
    assert all(_get(cfg, f) is None for f in PER_KIND_FIELDS)


@pytest.mark.parametrize("kind", ["classification", "rating", "generation"])
def test_each_kind_gets_its_values(kind):
    cfg = RunConfig(method="pplug")
    filled = resolve_per_kind(cfg, kind)
    assert filled == PER_KIND[kind]
    assert {f: _get(cfg, f) for f in PER_KIND_FIELDS} == PER_KIND[kind]
    assert resolve_per_kind(cfg, kind) == {}  # idempotent: nothing left to fill


def test_label_and_generation_tasks_differ_where_the_sweeps_said_so():
    label, gen = PER_KIND["classification"], PER_KIND["generation"]
    assert (label["plug.placement"], gen["plug.placement"]) == ("after_text", "before_text")
    assert label["plug.train_input_encoder"] is False and gen["plug.train_input_encoder"] is True
    assert (label["train.epochs"], PER_KIND["rating"]["train.epochs"], gen["train.epochs"]) == (3, 1, 2)


def test_explicit_settings_win():
    cfg = RunConfig(method="pplug")
    for o in ("plug.placement=before_text", "plug.train_input_encoder=true", "train.bucket=0",
              "decode.label_prior=0", "decode.label_shift=0.5", "decode.vocab_prior=0", "train.epochs=2"):
        apply_override(cfg, o)
    assert resolve_per_kind(cfg, "classification") == {}
    assert (cfg.plug.placement, cfg.plug.train_input_encoder, cfg.train.bucket, cfg.decode.label_prior) == \
        ("before_text", True, 0, 0.0)


@pytest.mark.parametrize("method,ablation,prior", [("pplug", "none", "auto"), ("rag-bm25", "none", "auto"),
                                                   ("zero-shot", "none", 0.0), ("task-lora", "none", 0.0),
                                                   ("oppu", "none", 0.0), ("pplug", "no_persona", 0.0)])
def test_label_prior_only_for_methods_that_read_the_history(method, ablation, prior):
    cfg = RunConfig(method=method)
    cfg.plug.ablation = ablation
    resolve_per_kind(cfg, "classification")
    assert cfg.decode.label_prior == prior and cfg.decode.label_shift == prior  # both "auto", or both 0


def test_kind_comes_from_the_task_and_must_be_known():
    cfg = RunConfig(method="pplug", task="synth_title")
    resolve_per_kind(cfg)
    assert cfg.plug.placement == "before_text"
    with pytest.raises(PPlugError, match="config.task"):
        resolve_per_kind(RunConfig(method="pplug"))
    with pytest.raises(PPlugError, match="unknown task kind 'poem'"):
        resolve_per_kind(RunConfig(method="pplug"), "poem")


def test_null_override_returns_a_field_to_its_kind_default():
    cfg = RunConfig(method="pplug")
    apply_override(cfg, "plug.placement=after_text")
    apply_override(cfg, "plug.placement=null")
    validate(cfg)
    resolve_per_kind(cfg, "generation")
    assert cfg.plug.placement == "before_text"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(n_train_users=2, n_dev_users=2, n_test_users=2,
                                                                    min_profile=3, max_profile=4))


@pytest.mark.parametrize("task,placement", [("synth_topic", "after_text"), ("synth_title", "before_text")])
def test_a_run_folder_saves_concrete_values(task, placement, synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    cfg = RunConfig(method="pplug", data=str(synth[task]))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_llama_dir), str(tiny_bert_dir)
    cfg.train.max_steps, cfg.train.augment_copies, cfg.train.progress = 1, 0, False
    cfg.decode.max_new_tokens, cfg.plug.n_persona_tokens = 2, 1
    res = Resources(None)
    report = train_run(cfg, tmp_path / "run", res)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["plug"]["placement"] == placement == report["per_kind_defaults"]["plug.placement"]
    assert saved["plug"]["train_input_encoder"] is (placement == "before_text")
    assert isinstance(saved["decode"]["label_prior"], float)  # "auto" was chosen on dev (or 0 for generation)
    loaded, _ = load_run(tmp_path / "run", res)
    assert loaded.plug.placement == placement
