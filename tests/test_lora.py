"""LoRA methods: task-lora round trip, parity of a fresh LoRA, parameter counts, and OPPU's per-user rules."""

from __future__ import annotations

import shutil

import pytest
import torch

from pplug.backbones import BackboneConfig, PromptParts, load_backbone
from pplug.config import DecodeConfig, LoraConfig, RunConfig
from pplug.data import load_split
from pplug.data.records import HistoryItem, Question
from pplug.errors import PPlugError
from pplug.methods import build_method
from pplug.methods import lora as lora_mod
from pplug.methods.baselines import RagPrompter
from pplug.methods.lora import adapter_bytes, attach_lora, n_trainable, user_examples, user_items
from pplug.resources import Resources
from pplug.retrieval import BM25Retriever
from pplug.synth import SynthConfig, synthesize
from pplug.tasks import get_task
from pplug.training import TrainConfig


@pytest.fixture(scope="module")
def topic_dir(tmp_path_factory):
    cfg = SynthConfig(n_train_users=2, n_dev_users=1, n_test_users=2, train_questions_per_user=2,
                      eval_questions_per_user=2, min_profile=3, max_profile=4)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)["synth_topic"]


def make_config(model_dir, method: str, **lora) -> RunConfig:
    return RunConfig(method=method, task="synth_topic",
                     backbone=BackboneConfig(name_or_path=str(model_dir), max_prompt_tokens=96),
                     train=TrainConfig(epochs=1, max_steps=2, batch_size=2, progress=False, augment_copies=0),
                     decode=DecodeConfig(max_new_tokens=2, batch_size=4), lora=LoraConfig(**lora))


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Non-LoRA weights under their original names (peft renames a wrapped layer's weight to base_layer)."""
    state = model.state_dict()
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in state.items() if "lora_" not in k}


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_modules())


# ---- peft plumbing --------------------------------------------------------------------------------
def test_fresh_lora_equals_base_model(tiny_backbone_dir):
    backbone = load_backbone(BackboneConfig(name_or_path=str(tiny_backbone_dir)))
    parts = [PromptParts(text="the cat sat on the mat"), PromptParts(text="a new battery design")]
    targets = ["sports", "science and travel"]
    batch = backbone.build(parts, targets=targets)
    with torch.no_grad():
        before = backbone.loss(batch, reduction="none")
        adapter = attach_lora(backbone.model, LoraConfig(), seed=0)
        assert has_lora(backbone.model)
        after = backbone.loss(backbone.build(parts, targets=targets), reduction="none")
    assert torch.equal(before, after)  # B = 0: exactly the base model
    adapter.unload()
    assert not has_lora(backbone.model)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_trainable_parameter_count(kind, tiny_llama_dir, tiny_t5_dir):
    r = 4
    model_dir = tiny_llama_dir if kind == "llama" else tiny_t5_dir
    backbone = load_backbone(BackboneConfig(name_or_path=str(model_dir)))
    adapter = attach_lora(backbone.model, LoraConfig(r=r), seed=0)
    if kind == "llama":  # 2 layers; q_proj 64->64, v_proj 64->32 (2 kv heads of 16); A: r x in, B: out x r
        expected = 2 * (r * (64 + 64) + r * (64 + 32))
    else:  # encoder self-attn (2) + decoder self- and cross-attn (2 + 2); q and v are 64->64
        expected = 6 * 2 * r * (64 + 64)
    assert n_trainable(adapter) == expected
    assert all(("lora_" in n) == p.requires_grad for n, p in adapter.named_parameters())


def test_unknown_target_modules_error(tiny_llama_dir):
    backbone = load_backbone(BackboneConfig(name_or_path=str(tiny_llama_dir)))
    with pytest.raises(PPlugError, match="q_proj"):
        attach_lora(backbone.model, LoraConfig(target_modules=["query", "value"]), seed=0)


# ---- task-lora ------------------------------------------------------------------------------------
def test_task_lora_round_trip_leaves_shared_backbone_alone(tiny_backbone_dir, topic_dir, tmp_path):
    config = make_config(tiny_backbone_dir, "task-lora")
    resources = Resources(embedding_cache=None)
    shared = resources.backbone(config.backbone)
    original = base_weights(shared.model)
    method = build_method(config, resources)
    assert method.backbone is not shared
    train, dev, test = (load_split(topic_dir, s) for s in ("train", "dev", "test"))
    report = method.fit(train, dev, tmp_path)
    assert report["steps"] == 2 and report["trainable_parameters"] > 0
    assert (tmp_path / "task_lora" / "adapter_model.safetensors").is_file()
    # the shared backbone is untouched, and training changed only LoRA weights of our own copy
    assert not has_lora(shared.model)
    assert all(torch.equal(v, original[k]) for k, v in shared.model.state_dict().items())
    trained = base_weights(method.backbone.model)
    assert trained.keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in trained.items())
    preds = method.predict(test.questions)
    again = build_method(config, resources)
    again.load(tmp_path)
    loaded = again.predict(test.questions)
    assert [p.id for p in loaded] == [q.id for q in test.questions]
    assert [p.raw for p in loaded] == [p.raw for p in preds]


def test_predict_before_fit_or_load_is_an_error(tiny_llama_dir, topic_dir, tmp_path):
    method = build_method(make_config(tiny_llama_dir, "task-lora"))
    with pytest.raises(PPlugError, match="fit or load"):
        method.predict(load_split(topic_dir, "test").questions)
    with pytest.raises(PPlugError, match="no task LoRA"):
        method.load(tmp_path)


# ---- OPPU data rules ------------------------------------------------------------------------------
def _item(i: int, day: int, word: str) -> HistoryItem:
    return HistoryItem(f"p{i}", {"text": f"note about {word}", "category": "sports"}, f"2020-01-{day:02d}")


def test_user_examples_keep_only_items_in_every_profile():
    a, b, c = _item(0, 1, "alpha"), _item(1, 2, "bravo"), _item(2, 3, "charlie")
    gold0 = HistoryItem("q0-answer", {"text": "note about delta", "category": "music"}, "2020-01-04")
    q0 = Question("q0", "x", [a, b, c], user_id="u1")
    q1 = Question("q1", "y", [b, c, gold0], user_id="u1")  # a dropped by the profile cap; q0's answer joined
    task = get_task("synth_topic")
    assert [it.id for it in user_items([q0, q1])] == ["p1", "p2"]
    pairs = user_examples(task, [q0, q1])
    assert pairs == [task.item_pair(b), task.item_pair(c)]
    assert all("delta" not in text and out != "music" for text, out in pairs)  # q0's gold never leaks
    assert user_examples(task, [q0]) == [task.item_pair(it) for it in (a, b, c)]
    with pytest.raises(ValueError, match="one user"):
        user_examples(task, [q0, Question("q2", "z", [a], user_id="u2")])


def test_oppu_rag_training_prompts_show_only_older_items(tiny_tokenizer):
    task = get_task("synth_topic")
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    items = [_item(i, day, w) for i, (day, w) in enumerate(zip([1, 2, 2, 3, 5], words, strict=True))]
    prompter = RagPrompter(task, BM25Retriever(task), 1, 64, tiny_tokenizer)
    pairs = user_examples(task, [Question("q", "x", items, user_id="u")], prompter)
    assert len(pairs) == len(items)
    assert "Past items" not in pairs[0][0]  # nothing is older than the first item
    for item, (text, _) in zip(items, pairs, strict=True):
        shown = text.split("\n\n")[0] if text.startswith("Past items") else ""
        for other, w in zip(items, words, strict=True):
            if other.date >= item.date:  # on/after the trained item (itself included): never shown
                assert w not in shown
    assert "Past items" in pairs[-1][0]


# ---- OPPU end to end ------------------------------------------------------------------------------
def test_oppu_one_adapter_per_user_from_her_own_items(tiny_backbone_dir, topic_dir, tmp_path, monkeypatch):
    seen: list[list] = []
    real_loop = lora_mod.train_loop

    def spy(params, loss_fn, examples, config, **kw):
        if kw.get("desc", "").endswith(":user"):
            seen.append(list(examples))
        return real_loop(params, loss_fn, examples, config, **kw)

    monkeypatch.setattr(lora_mod, "train_loop", spy)
    config = make_config(tiny_backbone_dir, "oppu")
    method = build_method(config)
    original = base_weights(load_backbone(config.backbone).model)
    train, test = load_split(topic_dir, "train"), load_split(topic_dir, "test")
    run = tmp_path / "run"
    method.fit(train, None, run)
    merged = method.backbone.model.state_dict()
    assert not has_lora(method.backbone.model)
    q_name = next(k for k in merged if k.endswith(("q_proj.weight", ".q.weight")))
    k_name = next(k for k in merged if k.endswith(("k_proj.weight", ".k.weight")))
    o_name = next(k for k in merged if k.endswith(("o_proj.weight", ".o.weight")))
    assert not torch.equal(merged[q_name], original[q_name])  # the task LoRA (q/k/v, OPPU) was merged into q
    assert not torch.equal(merged[k_name], original[k_name])  # ... and k ...
    assert torch.equal(merged[o_name], original[o_name])  # ... and nothing else changed

    preds = method.predict(test.questions)
    assert [p.id for p in preds] == [q.id for q in test.questions]
    by_user: dict[str, list[Question]] = {}
    for q in test.questions:
        by_user.setdefault(q.user_key, []).append(q)
    assert len(by_user) == 2 and len(seen) == 2
    folders = sorted(p for p in (run / "users").iterdir())
    assert len(folders) == 2 and all((f / "adapter_model.safetensors").is_file() for f in folders)
    task = get_task("synth_topic")
    for examples, qs in zip(seen, by_user.values(), strict=True):
        assert examples == user_examples(task, qs)  # her own intersection only: nothing accumulated
    assert set(method.user_seconds) == set(by_user) == set(adapter_bytes(run))
    assert all(size > 0 for size in adapter_bytes(run).values())
    assert all(p.explanation[0]["personalized"] for p in preds)
    assert not has_lora(method.backbone.model)

    # a second predict reuses the saved adapters (no training) and gives the same outputs
    again = method.predict(test.questions)
    assert len(seen) == 2 and method.last_report["reused"] == list(by_user)
    assert [p.raw for p in again] == [p.raw for p in preds]

    # --users 1: a fresh run personalizes only the first user; the other falls back to the task model
    run1 = tmp_path / "run1"
    shutil.copytree(run / "task_lora", run1 / "task_lora")
    one = build_method(make_config(tiny_backbone_dir, "oppu", users=1))
    one.load(run1)
    out = one.predict(test.questions)
    assert len(list((run1 / "users").iterdir())) == 1 and len(one.user_seconds) == 1
    first, second = list(by_user)
    assert one.last_report["personalized"] == [first] and one.last_report["not_personalized"] == [second]
    flags = {q.user_key: p.explanation[0]["personalized"] for q, p in zip(test.questions, out, strict=True)}
    assert flags == {first: True, second: False}

    # the budget holds across calls: one question at a time (a latency probe) trains nobody new
    for q in test.questions:
        one.predict([q])
        assert one.last_report["trained"] == []
        expected = "personalized" if q.user_key == first else "not_personalized"
        assert one.last_report[expected] == [q.user_key]
    assert len(list((run1 / "users").iterdir())) == 1


def test_oppu_rag_end_to_end(tiny_llama_dir, topic_dir, tmp_path):
    config = make_config(tiny_llama_dir, "oppu-rag")
    config.retrieval.k = 2
    method = build_method(config)
    method.fit(load_split(topic_dir, "train"), load_split(topic_dir, "dev"), tmp_path)
    test = load_split(topic_dir, "test")
    preds = method.predict(test.questions[:2])
    assert len(preds) == 2 and len(adapter_bytes(tmp_path)) == 1


# ---- fidelity to OPPU's code ----------------------------------------------------------------------
def test_lamp7_user_adapter_learns_her_text_not_copying():
    tweets = [HistoryItem(f"t{i}", {"text": f"my tweet number {i} lol"}, None) for i in range(3)]
    qs = [Question("q1", "Paraphrase the following tweet without any explanation before or after it: hi",
                   tweets, "u")]
    assert lora_mod.language_modelling(get_task("LaMP-7")) and not lora_mod.language_modelling(get_task("LaMP-5"))
    assert user_examples(get_task("LaMP-7"), qs) == [("", t.fields["text"]) for t in tweets]
    prompter = RagPrompter(get_task("LaMP-7"), BM25Retriever(get_task("LaMP-7")), 1, 64, None)
    assert user_examples(get_task("LaMP-7"), qs, prompter) == [("", t.fields["text"]) for t in tweets]


def test_lora_stages_use_oppu_defaults_and_overrides(tiny_llama_dir, topic_dir, tmp_path, monkeypatch):
    from pplug.cli.model_cmds import build_config

    seen = []
    original = lora_mod.train_loop
    monkeypatch.setattr(lora_mod, "train_loop", lambda *a, **k: seen.append(a[3]) or original(*a, **k))
    config = make_config(tiny_llama_dir, "oppu")
    method = build_method(config, Resources(embedding_cache=None))
    method.fit(load_split(topic_dir, "train"), None, tmp_path)
    task = seen[0]
    assert (task.epochs, task.lr, task.weight_decay, task.warmup, task.clip) == (3, 1e-3, 0.01, 0.1, 0.3)  # lr: dev
    assert (task.batch_size, task.max_steps) == (2, 2)  # the run's batch size and step cap still apply
    user = method.user_train_config()
    assert (user.epochs, user.lr, user.weight_decay, user.warmup, user.clip) == (2, 1e-4, 0.01, 0.1, 0.3)
    adapter = attach_lora(load_backbone(config.backbone).model, config.lora, 0, config.lora.task_target_modules)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in adapter.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj"}
    cli = build_config("task-lora", topic_dir, *[None] * 3, 1, 2e-4, *[None] * 12,
                       ["lora.task_clip=1", "train.lr=0.5"])
    assert (cli.lora.task_epochs, cli.lora.task_lr, cli.lora.task_clip, cli.train.lr) == (1, 2e-4, 1.0, 0.5)
    pplug = build_config("pplug", topic_dir, *[None] * 3, 1, 2e-4, *[None] * 12, None)
    assert (pplug.train.epochs, pplug.train.lr, pplug.lora.task_lr) == (1, 2e-4, 1e-3)
