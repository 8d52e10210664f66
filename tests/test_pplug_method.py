"""PPlug end to end on tiny random models (both backbone kinds): freezing, parameter count, run folder,
train -> save -> load -> predict round trip, swap-history and explanations."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pplug.config import RunConfig
from pplug.data import load_split
from pplug.methods.pplug import Example, PPlugMethod, augment, swap_partners, swapped_profiles
from pplug.resources import Resources
from pplug.runner import eval_run, load_run, train_run
from pplug.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=4, n_dev_users=2, n_test_users=2, min_profile=3, max_profile=6)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


def tiny_config(data, backbone_dir, encoder_dir, **plug) -> RunConfig:
    cfg = RunConfig(method="pplug", data=str(data))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(backbone_dir), str(encoder_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 2, False, 1, 2
    cfg.train.batch_size, cfg.decode.max_new_tokens = 4, 4
    for k, v in plug.items():
        setattr(cfg.plug, k, v)
    return cfg


def test_frozen_backbone_and_encoder_get_no_gradients(synth, tiny_backbone_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_topic"], tiny_backbone_dir, tiny_bert_dir, n_persona_tokens=2,
                      train_input_encoder=True)
    cfg.task = "synth_topic"
    method = PPlugMethod(cfg, Resources(None))
    train = load_split(cfg.data, "train")
    loss = method._loss([Example(q, train.gold(q)) for q in train.questions[:3]])
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.backbone.model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.history_encoder.encoder.parameters())
    assert all(p.grad is not None for p in method.plug.parameters() if p.requires_grad)
    d_enc, d_lm, k = method.history_encoder.dim, method.backbone.hidden_size, 2
    plug_params = (d_enc * d_lm + d_lm + d_lm * k * d_lm + k * d_lm) + (d_enc * d_lm + d_lm + d_lm * d_lm + d_lm) \
        + d_enc + 1 + (1 + k)  # proj + proj_I + I0 + log_tau + gain
    enc_params = sum(p.numel() for p in method.input_encoder.parameters())
    assert method.n_trainable() == plug_params + enc_params


def test_frozen_input_encoder_is_not_trained(synth, tiny_llama_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_topic"], tiny_llama_dir, tiny_bert_dir, train_input_encoder=False)
    cfg.task = "synth_topic"
    method = PPlugMethod(cfg, Resources(None))
    assert method.input_encoder is None and "input_encoder" not in method.trainable


def test_train_save_load_predict_round_trip(synth, tiny_backbone_dir, tiny_bert_dir, tmp_path):
    cfg = tiny_config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir, n_persona_tokens=2)
    res = Resources(None)
    report = train_run(cfg, tmp_path / "run", res)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "train_report.json"} <= files
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["task"] == "synth_title" and saved["plug"]["n_persona_tokens"] == 2
    assert report["steps"] == 2 and report["trainable_parameters"] > 0
    # the run folder holds the trainable weights only: far smaller than the backbone
    backbone_bytes = sum(p.numel() * 4 for p in res.backbone(cfg.backbone).model.parameters())
    enc_bytes = sum(p.numel() * 4 for p in res.encoder(cfg.encoder).encoder.parameters())
    assert (tmp_path / "run" / "model.safetensors").stat().st_size < enc_bytes + backbone_bytes / 2

    test = load_split(cfg.data, "test")
    _, trained = load_run(tmp_path / "run", res)
    first = trained.predict(test.questions)
    _, again = load_run(tmp_path / "run", res)
    second = again.predict(test.questions)
    assert [p.output for p in first] == [p.output for p in second]
    assert len(first) == len(test) and all(p.explanation for p in first)
    top = first[0].explanation
    assert {"item_id", "weight", "text"} <= set(top[0]) and top[0]["weight"] >= top[-1]["weight"]
    report = eval_run(tmp_path / "run", cfg.data, "test", resources=res)
    assert set(report["metrics"]) == {"rouge-1", "rouge-L"} and report["questions"] == len(test)


def test_precomputed_vectors_equal_encoding(synth, tiny_llama_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_topic"], tiny_llama_dir, tiny_bert_dir)
    cfg.task = "synth_topic"
    method = PPlugMethod(cfg, Resources(None))
    qs = load_split(cfg.data, "test").questions
    vecs = [method.item_vectors(q.profile) for q in qs]
    assert [p.output for p in method.predict(qs)] == [p.output for p in method.predict(qs, vectors=vecs)]


def test_swap_history_gives_every_question_another_users_profile(synth):
    qs = load_split(synth["synth_topic"], "test", "synth_topic").questions
    swapped = swapped_profiles(qs)
    owner = {id(q.profile): q.user_key for q in qs}
    assert all(owner[id(p)] != q.user_key for q, p in zip(qs, swapped, strict=True))


def test_augmentation_drops_between_1_and_50_percent():
    ex = [Example(question=None, gold="x")]  # type: ignore[arg-type]
    out = augment(ex, [10], copies=10, max_drop=0.5, seed=0)
    assert len(out) == 11
    kept = [len(e.keep) for e in out[1:]]
    assert all(5 <= k <= 9 for k in kept) and len(set(kept)) > 1
    assert augment(ex, [2], copies=10, max_drop=0.5, seed=0) == ex  # <= 2 items: no copies


def test_rank_decoding_always_returns_a_label(synth, tiny_backbone_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_topic"], tiny_backbone_dir, tiny_bert_dir)
    cfg.task, cfg.decode.classify = "synth_topic", "rank"
    method = PPlugMethod(cfg, Resources(None))
    preds = method.predict(load_split(cfg.data, "test").questions)
    assert all(p.output in method.task.labels for p in preds)


def test_user_without_history_masks_the_persona(synth, tiny_llama_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_topic"], tiny_llama_dir, tiny_bert_dir, n_persona_tokens=1)
    cfg.task = "synth_topic"
    method = PPlugMethod(cfg, Resources(None))
    q = load_split(cfg.data, "test").questions[0]
    q.profile = []
    out, built = method._forward([q], [[]])
    assert out.soft_mask.tolist() == [[True, False]]
    with torch.no_grad():
        assert method.predict([q])[0].explanation == []


def test_pplug_rag_puts_the_users_top_item_before_the_soft_tokens(synth, tiny_backbone_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir)
    cfg.task, cfg.method = "synth_title", "pplug-rag"
    method = PPlugMethod(cfg, Resources(None))
    qs = load_split(cfg.data, "test").questions[:3]
    prefixes = method._prefixes(qs, [q.profile for q in qs])
    for q, pre in zip(qs, prefixes, strict=True):
        own = {method.task.render_example(it) for it in q.profile}
        assert pre in own  # one of her own items, never another user's
        top = method.retriever.retrieve(method.task.query(q.input), q.profile, k=1)[0]
        assert pre == method.task.render_example(top)
    plain = tiny_config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir)
    plain.task = "synth_title"
    _, with_rag = method._forward(qs, [q.profile for q in qs])
    _, without = PPlugMethod(plain, Resources(None))._forward(qs, [q.profile for q in qs])
    assert with_rag.attention_mask.sum() > without.attention_mask.sum()
    assert len(method.predict(qs)) == 3


def test_predict_uses_the_precomputed_vectors(synth, tiny_backbone_dir, tiny_bert_dir):
    """Vectors given to `predict` (the server's stored embeddings) decide the aggregator weights; with a
    dated profile out of file order and a cap, the rows used are those of the most recent items."""
    cfg = tiny_config(synth["synth_topic"], tiny_backbone_dir, tiny_bert_dir, max_history=3)
    cfg.task = "synth_topic"
    method = PPlugMethod(cfg, Resources(None))
    qs = [q for q in load_split(cfg.data, "test").questions if len(q.profile) > 3][:2]
    dates = [f"2020-01-{d:02d}" for d in (5, 1, 9, 3, 7, 2, 8, 4, 6)]
    for q in qs:
        q.profile = [replace(it, date=dates[j % len(dates)]) for j, it in enumerate(q.profile)]
    recent = [set(sorted(range(len(q.profile)), key=lambda j: q.profile[j].date)[-3:]) for q in qs]
    vecs = [method.item_vectors(q.profile) for q in qs]
    plain, given = method.predict(qs), method.predict(qs, vectors=vecs)
    for q, keep, p in zip(qs, recent, given, strict=True):
        assert {e["item_id"] for e in p.explanation} == {q.profile[j].id for j in keep}
    assert [p.explanation for p in plain] == [p.explanation for p in given]
    torch.manual_seed(3)
    other = method.predict(qs, vectors=[torch.nn.functional.normalize(torch.randn_like(v), dim=-1) for v in vecs])
    assert [p.explanation for p in other] != [p.explanation for p in given]  # fails if predict ignores vectors


def test_swap_history_run_trains_and_selects_on_own_histories(synth, tiny_llama_dir, tiny_bert_dir, tmp_path,
                                                              monkeypatch):
    from pplug.config import config_from_spec
    from pplug.methods import pplug as pplug_mod

    cfg = config_from_spec("pplug:swap_history", synth["synth_topic"])
    base = tiny_config(synth["synth_topic"], tiny_llama_dir, tiny_bert_dir)
    cfg.backbone, cfg.encoder, cfg.train, cfg.decode.max_new_tokens = base.backbone, base.encoder, base.train, 4
    calls = []
    monkeypatch.setattr(pplug_mod, "swapped_profiles", lambda qs: calls.append(len(qs)) or [q.profile for q in qs])
    report = train_run(cfg, tmp_path / "run", Resources(None))
    assert report["best_dev"] is not None and calls == []  # dev selection ran, never on swapped histories
    _, method = load_run(tmp_path / "run", Resources(None))
    method.predict(load_split(cfg.data, "test").questions[:2])
    assert calls == [2]  # prediction still swaps: the run asked for the diagnostic


def _title_method(synth, backbone_dir, encoder_dir) -> tuple[PPlugMethod, object]:
    """An untrained PPlug on synth_title in eval mode, and the train split."""
    cfg = tiny_config(synth["synth_title"], backbone_dir, encoder_dir)
    cfg.task = "synth_title"
    method = PPlugMethod(cfg, Resources(None))
    method.trainable.eval()
    return method, load_split(cfg.data, "train")


def test_loss_is_the_token_mean_over_the_batch(synth, tiny_backbone_dir, tiny_bert_dir):
    """As the reference: one mean over every target token of the batch (not a mean of per-example means)."""
    method, train = _title_method(synth, tiny_backbone_dir, tiny_bert_dir)
    qs = train.questions[:2]
    golds = [train.gold(qs[0]), train.gold(qs[1]) + " and a much longer tail of words than the first"]
    batch = [Example(q, g) for q, g in zip(qs, golds, strict=True)]
    with torch.no_grad():
        _, built = method._forward(qs, [method._items(q.profile) for q in qs], golds)
        token_mean = method.backbone.loss(built)  # the backbone's batch token mean
        per_example = method.backbone.loss(built, reduction="none").mean()
        loss = method._loss(batch)
    assert loss.item() == pytest.approx(token_mean.item(), rel=1e-5)
    assert abs(loss.item() - per_example.item()) > 1e-4  # the two averages differ here
    method.class_weights = {golds[0]: 3.0}  # class weights scale each example's tokens
    n = built.target_tokens()
    nll = method.backbone.loss(built, reduction="none") * n
    with torch.no_grad():
        weighted = method._loss(batch)
    assert weighted.item() == pytest.approx(((3 * nll[0] + nll[1]) / (3 * n[0] + n[1])).item(), rel=1e-5)


def test_pplug_rag_can_show_only_the_top_items_output(synth, tiny_backbone_dir, tiny_bert_dir):
    cfg = tiny_config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir)
    cfg.task, cfg.method, cfg.retrieval.show = "synth_title", "pplug-rag", "output"
    method = PPlugMethod(cfg, Resources(None))
    qs = load_split(cfg.data, "test").questions[:3]
    for q, pre in zip(qs, method._prefixes(qs, [q.profile for q in qs]), strict=True):
        top = method.retriever.retrieve(method.task.query(q.input), q.profile, k=1)[0]
        assert pre == str(top.fields["title"]).strip()  # her own past title, without its article


def test_centered_persona_trains_saves_and_reloads(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    cfg = tiny_config(synth["synth_title"], tiny_llama_dir, tiny_bert_dir, center_persona=True)
    res = Resources(None)
    train_run(cfg, tmp_path / "run", res)
    _, trained = load_run(tmp_path / "run", res)
    mean = trained.plug.persona_mean
    assert bool(trained.plug.persona_mean_set) and mean.abs().sum() > 0  # set while training, saved, reloaded
    qs = load_split(cfg.data, "test").questions
    assert [p.output for p in trained.predict(qs)] == [p.output for p in load_run(tmp_path / "run", res)[1].predict(qs)]
    assert torch.equal(trained.plug.persona_mean, mean)  # prediction does not move it


def test_swap_partners_pick_the_next_question_of_another_user(synth):
    qs = load_split(str(synth["synth_title"]), "train").questions
    partners = swap_partners(qs)
    for i, j in enumerate(partners):
        assert j is not None and qs[j].user_key != qs[i].user_key
    same_user = [q for q in qs if q.user_key == qs[0].user_key]
    assert swap_partners(same_user) == [None] * len(same_user)  # nobody to contrast with: no hinge


def test_swap_contrast_adds_the_own_vs_other_history_hinge(synth, tiny_backbone_dir, tiny_bert_dir, tmp_path):
    method, train = _title_method(synth, tiny_backbone_dir, tiny_bert_dir)
    qs = train.questions[:4]
    batch = [Example(q, train.gold(q)) for q in qs]
    profiles = [method._items(q.profile) for q in qs]
    with torch.no_grad():
        plain = method._loss(batch)
        _, own_built = method._forward(qs, profiles, [ex.gold for ex in batch])
        own = method.backbone.loss(own_built, reduction="none")
        partners = swap_partners(qs)
        rows = [i for i, j in enumerate(partners) if j is not None]
        _, other_built = method._forward([qs[i] for i in rows], [profiles[partners[i]] for i in rows],
                                         [batch[i].gold for i in rows])
        other = method.backbone.loss(other_built, reduction="none")
        method.config.train.swap_contrast, method.config.train.swap_margin = 2.0, 0.5
        with_hinge = method._loss(batch)
    expected = plain + 2.0 * torch.relu(0.5 + own[rows] - other).mean()
    assert rows and with_hinge.item() == pytest.approx(expected.item(), rel=1e-5)
    assert with_hinge.item() >= plain.item()
    # and it trains end to end (gradients flow through both passes)
    cfg2 = tiny_config(synth["synth_title"], tiny_backbone_dir, tiny_bert_dir)
    cfg2.train.swap_contrast = 1.0
    report = train_run(cfg2, tmp_path / "run", Resources(None))
    assert report["steps"] == 2
