"""Run config: overrides are parsed by field type and every section is validated, the field named."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from pplug.cli import main
from pplug.config import RULES, ConfigError, RunConfig, config_from_spec, parse_value


@pytest.mark.parametrize("override, message", [
    ("decode.classify=rnak", "decode.classify: 'rnak' is not one of ['generate', 'rank']"),
    ("train.epochs=two", "train.epochs: 'two' is not an int"),
    ("train.epochs=1.5", "train.epochs: 1.5 is not an int"),
    ("train.epochs=0", "train.epochs: 0 is below the minimum 1"),
    ("train.lr=-0.1", "train.lr: -0.1 must be greater than 0"),
    ("train.warmup=2", "train.warmup: 2.0 is outside [0, 1]"),
    ("train.progress=yes", "train.progress: 'yes' is not a bool"),
    ("plug.ablation=no_plug", "plug.ablation: 'no_plug' is not one of"),
    ("retrieval.retriever=bm26", "retrieval.retriever: 'bm26' is not one of ['bm25', 'dense', 'recency']"),
    ("backbone.dtype=float8", "backbone.dtype: 'float8' is not one of"),
    ("lora.users=-1", "lora.users: -1 is below the minimum 0"),
    ("lora.target_modules=[1, 2]", "lora.target_modules: [1, 2] is not a list of str"),
    ("decode.max_new_tokens=null", None),
    ("lora.task_lr=2e-4", None),
])
def test_overrides_are_validated_with_the_field_named(override, message):
    if message is None:
        config_from_spec("pplug", "d", [override])
        return
    with pytest.raises(ConfigError) as err:
        config_from_spec("pplug", "d", [override])
    assert str(err.value).startswith(message)


def test_values_are_parsed_by_field_type():
    assert parse_value("123", str) == "123" and parse_value("1", float) == 1.0 and parse_value("1", int) == 1
    assert parse_value("q_proj, v_proj", list[str]) == ["q_proj", "v_proj"]
    assert parse_value('["q"]', list[str]) == ["q"] and parse_value("null", int | None) is None
    cfg = config_from_spec("pplug", "d", ["backbone.name_or_path=1.5", "train.lr=1"])
    assert cfg.backbone.name_or_path == "1.5" and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_every_rule_names_a_real_field():
    cfg = RunConfig()
    for section, rules in RULES.items():
        target = cfg if section == "run" else getattr(cfg, section)  # "run": RunConfig's own fields (device)
        assert set(rules) <= {f.name for f in fields(target)}, section


def test_cli_bad_override_is_one_line_naming_the_field(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--method", "pplug", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
              "--set", "train.epochs=two"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == "error: train.epochs: 'two' is not an int"


def test_a_bad_saved_config_names_the_file_and_field(tmp_path):
    data = RunConfig().to_dict()
    data["decode"]["classify"] = "rnak"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config.json: decode.classify: 'rnak'"):
        RunConfig.load(tmp_path / "config.json")
    data["decode"]["classify"] = "rank"
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert RunConfig.load(tmp_path / "config.json").decode.classify == "rank"
