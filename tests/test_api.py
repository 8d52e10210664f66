"""The Python API (`from pplug import PPlug`) on tiny models: from_pretrained / generate / predict /
save_pretrained for every method kind, the README snippet as written, and no environment changes on import."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pplug import PPlug, Prediction
from pplug.config import RunConfig
from pplug.errors import PPlugError
from pplug.resources import Resources
from pplug.runner import train_run
from pplug.synth import SynthConfig, synthesize

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=3, n_dev_users=2, n_test_users=2, min_profile=3, max_profile=5)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


def tiny_run(method, data, run_dir, backbone_dir, encoder_dir, res) -> Path:
    cfg = RunConfig(method=method, data=str(data))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(backbone_dir), str(encoder_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 1, False, 0, 2
    cfg.train.batch_size, cfg.decode.max_new_tokens, cfg.plug.n_persona_tokens = 4, 3, 2
    cfg.lora.users = 1
    train_run(cfg, run_dir, res)
    return Path(run_dir)


def test_import_changes_no_environment_variable():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                            "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")}
    code = ("import os, pplug, pplug.api, pplug.encoders, pplug.backbones, pplug.runner, pplug.cli; "
            "print(sorted(k for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_DATASETS_OFFLINE', "
            "'TOKENIZERS_PARALLELISM') if k in os.environ))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("method", ["pplug", "zero-shot", "task-lora", "oppu"])
def test_from_pretrained_generate_save_reload(method, synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    res = Resources(None)
    data = synth["synth_topic"]
    run = tiny_run(method, data, tmp_path / "run", tiny_llama_dir, tiny_bert_dir, res)
    model = PPlug.from_pretrained(run, resources=res)
    assert model.task == "synth_topic" and model.method_name == method
    question = json.loads((data / "test_questions.json").read_text())[0]
    pred = model.generate(question["input"], history=question["profile"], user_id=question["user_id"])
    assert isinstance(pred, Prediction) and isinstance(pred.output, str)
    if method == "pplug":  # the explanation: history items with aggregator weights
        assert pred.explanation and {"item_id", "weight", "text"} <= set(pred.explanation[0])
    if method == "oppu":  # which adapter answered
        assert pred.explanation and "personalized" in pred.explanation[0]
    out = model.save_pretrained(tmp_path / "exported")
    assert (out / "config.json").is_file()
    again = PPlug.from_pretrained(out, resources=res)
    assert again.predict([question])[0].output == model.predict([question])[0].output


def test_predict_takes_dicts_and_dataclasses_and_overrides(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    from pplug.data import load_split

    res = Resources(None)
    run = tiny_run("pplug", synth["synth_topic"], tmp_path / "run", tiny_llama_dir, tiny_bert_dir, res)
    test = load_split(synth["synth_topic"], "test")
    ranked = PPlug.from_pretrained(run, overrides={"decode.classify": "rank"}, resources=res)
    assert ranked.config.decode.classify == "rank"
    as_objects = ranked.predict(test.questions[:2])
    as_dicts = ranked.predict([q.to_json() for q in test.questions[:2]])
    assert [p.output for p in as_objects] == [p.output for p in as_dicts]
    assert all(p.output in ("sports", "music", "science", "travel", "food", "politics") for p in as_objects)
    with pytest.raises(PPlugError, match="after training"):
        PPlug.from_pretrained(run, overrides=["train.epochs=3"], resources=res)
    with pytest.raises(PPlugError, match="history\\[0\\]"):
        ranked.generate("x", history=[{"text": "no id", "category": "music"}])


def test_missing_folder_or_weights_is_a_clear_error_before_loading(tmp_path, synth, tiny_llama_dir, tiny_bert_dir,
                                                                   monkeypatch):
    with pytest.raises(PPlugError, match="run folder not found"):
        PPlug.from_pretrained(tmp_path / "nope")
    res = Resources(None)
    run = tiny_run("pplug", synth["synth_topic"], tmp_path / "run", tiny_llama_dir, tiny_bert_dir, res)
    (run / "model.safetensors").unlink()
    import pplug.runner

    monkeypatch.setattr(pplug.runner, "build_method", lambda *a, **k: pytest.fail("loaded models first"))
    with pytest.raises(PPlugError, match="model.safetensors: weights not found"):
        PPlug.from_pretrained(run)


def test_readme_python_api_snippet_runs_as_written(synth, tiny_llama_dir, tiny_bert_dir, tmp_path, monkeypatch,
                                                   capsys):
    """The README's Python API block, unchanged, on a tiny run at the path it names."""
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    tiny_run("pplug", synth["synth_topic"], Path("runs/topic"), tiny_llama_dir, tiny_bert_dir, Resources(None))
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")  # the tiny random model may answer "" on the first line
    assert len(printed) == 4 and "item_id" in printed[1] and printed[2].split()[-1].isdigit()
    assert {"config.json", "model.safetensors"} <= {p.name for p in Path("exported/topic").iterdir()}


def test_loaders_read_local_files_only_without_offline_variables(tiny_llama_dir, tiny_bert_dir, tmp_path):
    """With no *_OFFLINE variable and an unreachable hub, local models load and a missing one is one clear error."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    code = (f"from pplug.backbones import BackboneConfig, load_backbone\n"
            f"from pplug.encoders import EncoderConfig, load_encoder\n"
            f"from pplug.errors import PPlugError\n"
            f"load_backbone(BackboneConfig(name_or_path={str(tiny_llama_dir)!r}))\n"
            f"load_encoder(EncoderConfig(name_or_path={str(tiny_bert_dir)!r}))\n"
            f"try:\n    load_backbone(BackboneConfig(name_or_path='org/not-local'))\n"
            f"except PPlugError as e:\n    print('error:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "error: model folder not found" in out.stdout and "not-local" in out.stdout
