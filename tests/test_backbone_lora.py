"""plug.backbone_lora: one shared LoRA inside the backbone, trained with the plug, saved with its weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pplug.config import ConfigError, RunConfig
from pplug.data import load_split
from pplug.errors import PPlugError
from pplug.methods.pplug import LORA_PREFIX, WEIGHTS, Example, PPlugMethod
from pplug.resources import Resources
from pplug.runner import load_run, train_run
from pplug.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=4, n_dev_users=2, n_test_users=2, min_profile=3, max_profile=6)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


def config(data, backbone_dir, encoder_dir, task: str, lora: bool = True) -> RunConfig:
    cfg = RunConfig(method="pplug", data=str(data), task=task)
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(backbone_dir), str(encoder_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 3, False, 0, 2
    cfg.train.batch_size, cfg.decode.max_new_tokens = 4, 4
    cfg.train.lr = 5e-2  # large enough that 3 steps move every LoRA B matrix away from its zero start
    cfg.plug.backbone_lora, cfg.plug.placement, cfg.plug.n_persona_tokens = lora, "before_text", 2
    return cfg


def lora_tensors(method: PPlugMethod) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.backbone.model.named_parameters() if "lora_" in n}


def test_the_lora_gets_gradients_and_the_rest_of_the_backbone_stays_frozen(synth, tiny_backbone_dir, tiny_bert_dir):
    cfg = config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir, "synth_title")
    method = PPlugMethod(cfg, Resources(None))
    train = load_split(cfg.data, "train")
    method.train_mode(True)
    method._loss([Example(q, train.gold(q)) for q in train.questions[:3]]).backward()
    named = dict(method.backbone.model.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any("lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items())
    assert all(p.grad is None and not p.requires_grad for n, p in named.items() if "lora_" not in n)
    lora_params = sum(p.numel() for p in lora.values())
    plug_params = sum(p.numel() for p in method.trainable.parameters() if p.requires_grad)
    assert method.n_trainable() == plug_params + lora_params


def test_a_shared_backbone_is_never_mutated(synth, tiny_llama_dir, tiny_bert_dir):
    res = Resources(None)
    shared = res.backbone(config(synth["synth_title"], tiny_llama_dir, tiny_bert_dir, "synth_title").backbone)
    method = PPlugMethod(config(synth["synth_title"], tiny_llama_dir, tiny_bert_dir, "synth_title"), res)
    assert method.backbone is not shared
    assert not any("lora_" in n for n, _ in shared.model.named_parameters())


def test_train_save_load_round_trip_keeps_the_trained_lora(synth, tiny_backbone_dir, tiny_bert_dir, tmp_path):
    cfg = config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir, "synth_title")
    res = Resources(None)
    train_run(cfg, tmp_path / "run", res)
    saved = load_file(str(tmp_path / "run" / WEIGHTS))
    lora_keys = [k for k in saved if k.startswith(LORA_PREFIX)]
    assert lora_keys and any(saved[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)  # trained, not the 0 init
    test = load_split(cfg.data, "test")
    _, first = load_run(tmp_path / "run", res)
    _, second = load_run(tmp_path / "run", res)
    assert lora_tensors(first).keys() == lora_tensors(second).keys()
    for name, value in lora_tensors(first).items():
        assert torch.equal(value, lora_tensors(second)[name])
    # the loaded LoRA is the saved one, and it changes the outputs: zero its B matrices and the logits move
    assert [p.output for p in first.predict(test.questions)] == [p.output for p in second.predict(test.questions)]
    q = test.questions[:2]
    with torch.no_grad():
        _, built = first._forward(q, [x.profile for x in q], [test.gold(x) for x in q])
        before = first.backbone.loss(built).item()
        for n, p in first.backbone.model.named_parameters():
            if "lora_B" in n:
                p.zero_()
        after = first.backbone.loss(built).item()
    assert before != pytest.approx(after)


def test_weights_and_config_must_agree(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    data = synth["synth_title"]
    res = Resources(None)
    train_run(config(data, tiny_llama_dir, tiny_bert_dir, "synth_title"), tmp_path / "lora", res)
    plain = PPlugMethod(config(data, tiny_llama_dir, tiny_bert_dir, "synth_title", lora=False), res)
    with pytest.raises(PPlugError, match="holds a backbone LoRA.*backbone_lora=false"):
        plain.load(tmp_path / "lora")
    (tmp_path / "plain").mkdir()
    plain.save(tmp_path / "plain")
    with_lora = PPlugMethod(config(data, tiny_llama_dir, tiny_bert_dir, "synth_title"), res)
    with pytest.raises(PPlugError, match="holds no backbone LoRA"):
        with_lora.load(tmp_path / "plain")


def test_after_text_placement_is_refused(synth, tiny_llama_dir, tiny_bert_dir):
    cfg = config(synth["synth_topic"], tiny_llama_dir, tiny_bert_dir, "synth_topic")
    cfg.plug.placement = "after_text"
    with pytest.raises(ConfigError, match="backbone_lora=true needs plug.placement=before_text"):
        PPlugMethod(cfg, Resources(None))
