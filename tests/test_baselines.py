"""Prompt baselines (zero-shot, RAG) on tiny models of both kinds, through the run/CLI machinery."""

from __future__ import annotations

import json

import pytest

from pplug.cli import main
from pplug.config import RunConfig, config_from_spec
from pplug.data import load_split
from pplug.resources import Resources
from pplug.runner import eval_run, train_run
from pplug.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(n_train_users=3, n_dev_users=2, n_test_users=2,
                                                                    min_profile=3, max_profile=5))


@pytest.mark.parametrize("method", ["zero-shot", "rag-bm25", "rag-dense", "rag-recency"])
def test_prompt_methods_predict_every_question(method, synth, tiny_backbone_dir, tiny_bert_dir, tmp_path):
    cfg = RunConfig(method=method, data=str(synth["synth_topic"]))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_backbone_dir), str(tiny_bert_dir)
    cfg.decode.max_new_tokens = 3
    report = train_run(cfg, tmp_path / "run", Resources(None))
    assert report["trainable_parameters"] == 0
    ev = eval_run(tmp_path / "run", cfg.data, "test", resources=Resources(None))
    assert ev["questions"] == len(load_split(cfg.data, "test"))
    assert ev["mean_prompt_tokens"] > 0


def test_rag_prompts_are_longer_than_zero_shot(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    res, tokens = Resources(None), {}
    for method in ("zero-shot", "rag-bm25"):
        cfg = RunConfig(method=method, data=str(synth["synth_title"]))
        cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_llama_dir), str(tiny_bert_dir)
        cfg.decode.max_new_tokens = 2
        train_run(cfg, tmp_path / method, res)
        tokens[method] = eval_run(tmp_path / method, cfg.data, "test", resources=res)["mean_prompt_tokens"]
    assert tokens["rag-bm25"] > tokens["zero-shot"] + 10


def test_spec_parsing():
    cfg = config_from_spec("pplug:no_persona@plug.n_persona_tokens=4,train.lr=0.01", "d", ["train.epochs=3"])
    assert (cfg.plug.ablation, cfg.plug.n_persona_tokens, cfg.train.lr, cfg.train.epochs) == ("no_persona", 4, 0.01, 3)
    assert config_from_spec("pplug:swap_history", "d").decode.swap_history
    with pytest.raises(Exception, match="unknown variant"):
        config_from_spec("pplug:nope", "d")
    with pytest.raises(Exception, match="unknown field"):
        config_from_spec("pplug@plug.nope=1", "d")


def test_cli_train_predict_eval_smoke(synth, tiny_llama_dir, tiny_bert_dir, tmp_path, capsys):
    data, run = str(synth["synth_topic"]), str(tmp_path / "run")
    common = ["--backbone", str(tiny_llama_dir), "--encoder", str(tiny_bert_dir)]

    def call(argv):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code in (0, None), capsys.readouterr().err
        return capsys.readouterr().out

    def last_json(text):
        return json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)

    out = call(["train", "--method", "pplug", "--data", data, "--out", run, "--max-steps", "1", "--augment-copies",
                "0", "--dev-limit", "2", "--persona-tokens", "2", "--set", "decode.max_new_tokens=2", *common])
    assert last_json(out)["steps"] == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plug"]["n_persona_tokens"] == 2
    out = call(["predict", "--run", run, "--data", data, "--out", str(tmp_path / "p.json"), "--limit", "2"])
    assert json.loads(out)["questions"] == 2
    assert len(json.loads((tmp_path / "p.json").read_text())["golds"]) == 2
    report = last_json(call(["eval", "--run", run, "--data", data, "--split", "test", "--swap-history"]))
    assert report["swap_history"] and "accuracy" in report["metrics"]
    assert "pplug" in call(["methods"])


def test_cli_bad_run_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--run", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
