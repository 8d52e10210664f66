"""The paper recipe (recipes/paper-lamp.json): its values are the paper's, and `pplug train --config` runs it end to
end on CPU with tiny random models of the same architectures (T5 backbone, BERT encoder with CLS pooling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import run
from pplug.config import ConfigError, config_file
from pplug.synth import SynthConfig, synthesize

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "paper-lamp.json"


def test_the_recipe_holds_the_papers_settings():
    cfg = config_file(RECIPE)  # DESIGN.md: PPlug, FlanT5-XXL + BGE-base, AdamW lr 1e-4, wd 1e-4, warmup 5%, ...
    assert cfg.method == "pplug" and cfg.device == "auto"
    assert "flan-t5-xxl" in cfg.backbone.name_or_path and "bge-base" in cfg.encoder.name_or_path
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup, cfg.train.epochs) == (1e-4, 1e-4, 0.05, 2)
    assert (cfg.train.augment_copies, cfg.train.augment_max_drop) == (10, 0.5)  # 10 copies, drop 1..50%
    assert cfg.decode.num_beams == 4 and cfg.decode.classify == "generate"
    assert cfg.backbone.max_prompt_tokens == 512 and cfg.encoder.pooling == "cls"  # BGE embeds with [CLS]
    assert cfg.plug.n_persona_tokens == 1 and cfg.plug.train_input_encoder and cfg.plug.ablation == "none"
    assert cfg.plug.placement == "before_text" and cfg.plug.max_history == 512  # [I; P_u; x], up to 512 items
    assert (cfg.backbone.dtype, cfg.plug.dtype) == ("bfloat16", "bfloat16")


def test_the_recipe_trains_and_evaluates_on_cpu_with_tiny_models(tmp_path, tiny_t5_dir, tiny_bert_dir, capsys):
    data = synthesize(tmp_path / "data", SynthConfig(n_train_users=3, n_dev_users=1, n_test_users=1, min_profile=3,
                                                     max_profile=5))["synth_title"]
    out = tmp_path / "run"
    code = run(["train", "--config", str(RECIPE), "--data", str(data), "--out", str(out), "-q",
                "--backbone", str(tiny_t5_dir), "--set", f"encoder.name_or_path={tiny_bert_dir}", "--device", "cpu",
                "--max-steps", "2", "--dev-limit", "1", "--set", "train.augment_copies=1",
                "--set", "decode.max_new_tokens=3"])
    capsys.readouterr()
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    recipe = json.loads(RECIPE.read_text())
    # flags and --set win over the file, everything else is the file's
    assert saved["backbone"]["name_or_path"] == str(tiny_t5_dir) and saved["device"] == "cpu"
    assert saved["encoder"]["name_or_path"] == str(tiny_bert_dir) and saved["train"]["max_steps"] == 2
    assert saved["train"]["augment_copies"] == 1 and saved["decode"]["max_new_tokens"] == 3
    for section in ("plug", "decode", "train"):
        for key, value in recipe[section].items():
            if (section, key) not in {("train", "augment_copies"), ("decode", "max_new_tokens")}:
                assert saved[section][key] == value, f"{section}.{key}"
    code = run(["eval", "--run", str(out), "--data", str(data), "--limit", "2", "-q"])  # beam 4 from the recipe
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["questions"] == 2 and set(report["metrics"]) >= {"rouge-1", "rouge-L"}


def test_a_bad_config_file_is_one_line_naming_the_file_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "pplug", "train": {"lr": 1e-4, "lrr": 1}}))
    with pytest.raises(ConfigError, match=r"bad.json: unknown config field 'TrainConfig.lrr'"):
        config_file(bad)
    bad.write_text(json.dumps({"device": "gpu"}))
    code = run(["train", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "bad.json: device: 'gpu' is not a device" in err
    assert "\n" not in err
    code = run(["train", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")])
    assert code == 2 and "missing.json: config file not found" in capsys.readouterr().err
    code = run(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])  # no --config, no --method
    assert code == 2 and "give --method" in capsys.readouterr().err
