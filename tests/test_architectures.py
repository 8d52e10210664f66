"""Any Hugging Face model by local path: tiny random Llama, Qwen2, Mistral (decoder-only) and T5 (encoder-decoder)
backbones, BERT encoders with CLS or mean pooling, each saved to a temp folder; PPlug trains 2 steps and predicts
through every one. A missing or empty folder is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import run
from conftest import build_tiny_tokenizer
from pplug.backbones import BackboneConfig, CausalBackbone, Seq2SeqBackbone, load_backbone
from pplug.config import RunConfig
from pplug.data import load_split
from pplug.errors import ModelMissingError
from pplug.resources import Resources
from pplug.runner import load_run, train_run
from pplug.synth import SynthConfig, synthesize


def _causal(kind: str, folder: Path) -> Path:
    """A 2-layer, 64-dim random decoder-only model of one architecture, with a chat-template tokenizer."""
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    tok = build_tiny_tokenizer(chat=True)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[kind]
    cfg = config_class(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       tie_word_embeddings=kind != "mistral")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=3, n_dev_users=1, n_test_users=2, min_profile=3, max_profile=5)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "t5"])
def backbone_dir(request, tmp_path_factory, tiny_t5_dir) -> tuple[str, Path]:
    if request.param == "t5":
        return "t5", tiny_t5_dir
    return request.param, _causal(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pplug_trains_and_predicts_through_each_architecture(synth, backbone_dir, tiny_bert_dir, pooling, tmp_path):
    kind, folder = backbone_dir
    cfg = RunConfig(method="pplug", data=str(synth["synth_title"]), device="cpu")
    cfg.backbone.name_or_path, cfg.encoder.name_or_path, cfg.encoder.pooling = str(folder), str(tiny_bert_dir), pooling
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.augment_copies = 2, 2, 0
    cfg.train.progress, cfg.train.select_on_dev, cfg.decode.max_new_tokens = False, False, 3
    resources = Resources(None)
    report = train_run(cfg, tmp_path / "run", resources)
    assert report["steps"] == 2 and (tmp_path / "run" / "model.safetensors").is_file()
    config, method = load_run(tmp_path / "run", resources)
    expected = Seq2SeqBackbone if kind == "t5" else CausalBackbone
    assert isinstance(method.backbone, expected)
    assert method.backbone.model.config.model_type == kind
    assert method.history_encoder.encoder.config.pooling == pooling == config.encoder.pooling
    test = load_split(config.data, "test", config.task)
    preds = method.predict(test.questions[:2])
    assert len(preds) == 2 and all(isinstance(p.output, str) for p in preds)
    assert all(p.explanation for p in preds)  # the aggregator weights are reported per item


def test_a_missing_or_empty_model_folder_is_one_clear_line(tmp_path, synth, tiny_bert_dir, capsys):
    with pytest.raises(ModelMissingError, match=r"model folder not found \(needs config.json\)"):
        load_backbone(BackboneConfig(str(tmp_path / "nope")))
    empty = tmp_path / "config-only"
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelMissingError, match=r"^cannot load the backbone from .*config-only: ") as e:
        load_backbone(BackboneConfig(str(empty)))
    assert "\n" not in str(e.value)
    code = run(["train", "--method", "pplug", "--data", str(synth["synth_title"]), "--out", str(tmp_path / "r"),
                "--backbone", str(tmp_path / "nope"), "--encoder", str(tiny_bert_dir), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: model folder not found") and "\n" not in err
