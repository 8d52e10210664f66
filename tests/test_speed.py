"""Speed levers that must not change results: float16 item vectors, length bucketing, placement option."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from pplug.embedding_cache import EmbeddingCache
from pplug.training import bucketed


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_float16_cache_halves_bytes_and_keeps_scores(tmp_path):
    items, queries = _unit(200, 384, 0), _unit(16, 384, 1)
    texts = [f"item {i}" for i in range(200)]
    cache = EmbeddingCache(tmp_path / "c.sqlite", "enc")
    cache.put_many(texts, items)
    fresh = EmbeddingCache(tmp_path / "c.sqlite", "enc")  # read back from disk
    got = np.stack(fresh.get_many(texts))
    assert got.dtype == np.float32
    blob = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT vec FROM embeddings LIMIT 1").fetchone()[0]
    assert len(blob) == 384 * 2  # half of float32
    scores, scores16 = queries @ items.T, queries @ got.T
    assert np.abs(scores - scores16).max() < 2e-3
    # the aggregator softmax (temperature 0.05) moves by well under a percent point
    w, w16 = (torch.tensor(s / 0.05).softmax(-1) for s in (scores, scores16))
    assert (w - w16).abs().max() < 5e-3
    assert (torch.tensor(scores).argmax(-1) == torch.tensor(scores16).argmax(-1)).all()
    assert np.array_equal(np.stack(cache.get_many(texts)), got)  # memory and disk agree exactly


def test_legacy_float32_blobs_are_read(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite", "enc", dtype="float32")
    vec = _unit(1, 8, 2)
    cache.put_many(["a"], vec)
    assert np.array_equal(EmbeddingCache(tmp_path / "c.sqlite", "enc", dtype="float32").get_many(["a"])[0], vec[0])
    assert np.abs(EmbeddingCache(tmp_path / "c.sqlite", "enc").get_many(["a"])[0] - vec[0]).max() < 1e-3
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingCache(None, "enc", dtype="int8")


def test_server_store_vectors_float16_round_trip():
    from pplug.server.store import decode_vec, encode_vec

    v = _unit(1, 384, 3)[0]
    blob = encode_vec(v)
    assert len(blob) == 384 * 2
    assert np.abs(decode_vec(blob, 384) - v).max() < 1e-3
    assert np.array_equal(decode_vec(v.tobytes(), 384), v)  # an older float32 store


def test_bucketed_batches_cover_every_index_once_by_length():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0]
    order = list(range(10))
    batches = bucketed(order, lengths, batch_size=2, window=5, seed=0)
    assert sorted(i for b in batches for i in b) == order
    assert all(len(b) == 2 for b in batches)
    assert sorted(tuple(b) for b in batches) == [(0, 8), (1, 9), (2, 6), (3, 7), (5, 4)] or \
        all(abs(lengths[b[0]] - lengths[b[1]]) <= 2 for b in batches)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from pplug.synth import SynthConfig, synthesize

    cfg = SynthConfig(n_train_users=4, n_dev_users=2, n_test_users=3, min_profile=3, max_profile=6)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


def _method(data, task, backbone_dir, encoder_dir, **plug):
    from pplug.config import RunConfig
    from pplug.methods.pplug import PPlugMethod
    from pplug.resources import Resources

    cfg = RunConfig(method="pplug", data=str(data), task=task)
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(backbone_dir), str(encoder_dir)
    cfg.train.progress, cfg.decode.max_new_tokens, cfg.decode.batch_size = False, 4, 2
    for k, v in plug.items():
        setattr(cfg.plug, k, v)
    return PPlugMethod(cfg, Resources(None))


def test_bucketed_prediction_keeps_input_order(synth, tiny_llama_dir, tiny_bert_dir):
    from pplug.data import load_split

    method = _method(synth["synth_topic"], "synth_topic", tiny_llama_dir, tiny_bert_dir)
    method.config.decode.classify = "rank"
    qs = load_split(synth["synth_topic"], "test").questions
    qs = sorted(qs, key=lambda q: -len(q.input))[:3] + sorted(qs, key=lambda q: len(q.input))[:3]  # mixed lengths
    bucketed_preds = method.predict(qs)
    method.config.decode.bucket = False
    plain = method.predict(qs)
    assert [p.id for p in bucketed_preds] == [q.id for q in qs]
    assert [p.output for p in bucketed_preds] == [p.output for p in plain]


def test_after_text_placement_trains_on_both_kinds(synth, tiny_backbone_dir, tiny_bert_dir):
    from pplug.data import load_split
    from pplug.methods.pplug import Example

    method = _method(synth["synth_title"], "synth_title", tiny_backbone_dir, tiny_bert_dir,
                     placement="after_text", n_persona_tokens=2)
    train = load_split(synth["synth_title"], "train")
    loss = method._loss([Example(q, train.gold(q)) for q in train.questions[:3]])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in method.plug.parameters() if p.requires_grad)
    assert all(p.grad is None for p in method.backbone.model.parameters())
    assert len(method.predict(train.questions[:3])) == 3


def test_placement_is_validated():
    from pplug.plug import PlugConfig

    with pytest.raises(ValueError, match="placement"):
        PlugConfig(placement="middle")


def test_frozen_input_encoder_queries_are_primed(synth, tiny_llama_dir, tiny_bert_dir):
    from pplug.data import load_split

    method = _method(synth["synth_topic"], "synth_topic", tiny_llama_dir, tiny_bert_dir, train_input_encoder=False)
    qs = load_split(synth["synth_topic"], "train").questions[:4]
    method.prime(qs)
    calls = method.history_encoder.stats.calls
    method._queries(qs)
    assert method.history_encoder.stats.calls == calls  # every query vector came from the cache


def test_encode_profiles_batches_users(synth, tiny_llama_dir, tiny_bert_dir):
    from pplug.data import load_split

    method = _method(synth["synth_topic"], "synth_topic", tiny_llama_dir, tiny_bert_dir)
    qs = load_split(synth["synth_topic"], "train").questions[:4]
    calls = method.history_encoder.stats.calls
    vecs = method.encode_profiles([q.profile for q in qs])
    assert method.history_encoder.stats.calls == calls + 1  # one encoder call for every user
    for q, v in zip(qs, vecs, strict=True):
        assert torch.allclose(v, method.item_vectors(method._items(q.profile)), atol=1e-6)


def test_fit_with_after_text_uses_and_then_drops_the_kv_memo(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    from pplug.config import RunConfig
    from pplug.resources import Resources
    from pplug.runner import train_run

    cfg = RunConfig(method="pplug", data=str(synth["synth_topic"]))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_llama_dir), str(tiny_bert_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 2, False, 1, 2
    cfg.train.batch_size, cfg.train.bucket, cfg.decode.classify = 4, 2, "rank"
    cfg.plug.placement, cfg.plug.train_input_encoder = "after_text", False
    res = Resources(None)
    report = train_run(cfg, tmp_path / "run", res)
    memo = res.backbone(cfg.backbone).frozen_rows
    assert report["steps"] == 2 and len(memo) == 0 and memo.max_bytes == 0


def test_step_bench_runs_variants_interleaved(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    import json

    from pplug.resources import Resources
    from pplug.step_bench import StepBenchConfig, markdown, parse_variant, run_step_bench, write

    cfg = StepBenchConfig(data=str(synth["synth_topic"]), steps=2, warmup=1, batch_size=2, questions=3, rounds=1,
                          onboard_users=2, repeat=2,
                          base=[f"backbone.name_or_path={tiny_llama_dir}", f"encoder.name_or_path={tiny_bert_dir}",
                                "decode.classify=rank", "plug.placement=before_text", "plug.train_input_encoder=true",
                                "train.bucket=0"],
                          variants=["today=bench.packed_options=false,decode.bucket=false",
                                    "fast=plug.placement=after_text,plug.train_input_encoder=false,train.bucket=2"])
    result = run_step_bench(cfg, Resources(None), log=lambda _: None)
    rows = result["variants"]
    assert list(rows) == ["today", "fast"] and rows["today"]["step_speedup"] == 1.0
    assert all(len(r["step_times"]) == 2 and r["question_s"] > 0 and r["train_peak_rss_mb"] > 0 for r in rows.values())
    assert rows["fast"]["trainable_parameters"] < rows["today"]["trainable_parameters"]  # no input encoder
    assert result["onboard"]["users"] == 2 and result["onboard"]["batched_vs_one_by_one_max_abs_diff"] < 1e-4
    assert "| fast |" in markdown(result)
    write(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["task"] == "synth_topic"
    with pytest.raises(Exception, match="NAME="):
        parse_variant("plug.placement")


def test_onboard_state_is_counted_in_float16(synth, tiny_llama_dir, tiny_bert_dir, tmp_path):
    from pplug.data import load_split

    method = _method(synth["synth_topic"], "synth_topic", tiny_llama_dir, tiny_bert_dir)
    qs = load_split(synth["synth_topic"], "test").questions[:1]
    _, state = method.onboard_cost(qs, tmp_path, users=1)
    assert state == len(method._items(qs[0].profile)) * method.history_encoder.dim * 2
