"""On the synthetic personalized task a trained plug beats its no_persona ablation (fixed seed), and
giving each question another user's history hurts it: the persona is really used.

The backbone is a frozen tiny random model (init std 0.3 so that its outputs respond to soft tokens);
quality is measured as the mean NLL of the gold outputs of unseen test users, which is far less noisy
than the accuracy of 12 questions.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_tokenizer
from pplug.config import RunConfig
from pplug.data import load_split
from pplug.methods.pplug import swapped_profiles
from pplug.resources import Resources
from pplug.runner import load_run, train_run
from pplug.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def responsive_backbone(tmp_path_factory, request):
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    out = {}
    tok = build_tiny_tokenizer(chat=True)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True, initializer_range=0.3))
    out["llama"] = tmp_path_factory.mktemp("resp-llama")
    llama.save_pretrained(out["llama"])
    tok.save_pretrained(out["llama"])
    tok = build_tiny_tokenizer(chat=False)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        initializer_factor=1.0))
    out["t5"] = tmp_path_factory.mktemp("resp-t5")
    t5.save_pretrained(out["t5"])
    tok.save_pretrained(out["t5"])
    return out


@pytest.fixture(scope="module")
def topic_data(tmp_path_factory):
    """synth_topic with every profile item's text cut to one neutral word, so that a tiny random encoder's
    item embedding is dominated by the item's label (the real MiniLM needs no such help)."""
    cfg = SynthConfig(n_train_users=12, n_dev_users=6, n_test_users=6, favorite_prob=1.0, min_profile=4,
                      max_profile=8)
    folder = synthesize(tmp_path_factory.mktemp("learn"), cfg)["synth_topic"]
    for split in ("train", "dev", "test"):
        path = folder / f"{split}_questions.json"
        questions = json.loads(path.read_text())
        for q in questions:
            for item in q["profile"]:
                item["text"] = item["text"].split()[0]
        path.write_text(json.dumps(questions))
    return folder


def gold_nll(method, questions, golds, profiles=None) -> float:
    """Mean per-token NLL of the gold outputs (no gradient)."""
    profiles = profiles or [q.profile for q in questions]
    with torch.no_grad():
        method.trainable.eval()
        _, built = method._forward(questions, [method._items(p) for p in profiles], [golds[q.id] for q in questions])
        return float(method.backbone.loss(built, reduction="none").mean())


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_trained_plug_beats_no_persona(kind, responsive_backbone, topic_data, tiny_bert_dir, tmp_path):
    res = Resources(None)
    nll = {}
    for ablation in ("none", "no_persona"):
        cfg = RunConfig(method="pplug", data=str(topic_data))
        cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(responsive_backbone[kind]), str(tiny_bert_dir)
        cfg.backbone.max_prompt_tokens = 64
        cfg.plug.ablation, cfg.plug.train_input_encoder = ablation, False
        cfg.train.epochs, cfg.train.lr, cfg.train.augment_copies, cfg.train.progress = 20, 3e-2, 0, False
        cfg.train.select_on_dev = False
        train_run(cfg, tmp_path / ablation, res)
        _, method = load_run(tmp_path / ablation, res)
        test = load_split(topic_data, "test")
        nll[ablation] = gold_nll(method, test.questions, test.golds)
        if ablation == "none":
            nll["swap"] = gold_nll(method, test.questions, test.golds, swapped_profiles(test.questions))
    assert nll["none"] < nll["no_persona"] - 0.1, nll
    assert nll["none"] < nll["swap"] - 0.1, nll
    print(kind, nll)
