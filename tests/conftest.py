"""Shared fixtures: tiny random models (2-layer Llama, T5, BERT) and a tiny local tokenizer.

Everything is built from configs in milliseconds; nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pytest_configure(config):
    """One torch thread: tiny models stall with 2 threads on a busy 2-core machine."""
    import torch

    torch.set_num_threads(1)

CORPUS = [
    "which category does this note belong to among the following categories",
    "just answer with the category name categories sports music science travel food politics",
    "generate a title for the following article abstract of a paper",
    "the cat sat on the mat and the dog ran in the park",
    "researchers tested a new battery design that charges in minutes",
    "Breaking: Update: Watch: ALL CAPS Title Case lower case report !",
    "past items of this user is a title for the category for the note",
    "0123456789 [1] [2] . , : ; ' \" ( ) - & ?",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(chat: bool = True):
    """A byte-level BPE tokenizer (~300 tokens) trained in memory on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-dim random Llama with a chat template (decoder-only backbone)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(chat=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    return _save(LlamaForCausalLM(cfg).eval(), tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-dim random T5 without a chat template (encoder-decoder backbone)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = build_tiny_tokenizer(chat=False)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    return _save(T5ForConditionalGeneration(cfg).eval(), tok, tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim random BERT (sentence encoder, mean pooling)."""
    import torch
    from transformers import BertConfig, BertModel

    tok = build_tiny_tokenizer(chat=False)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    return _save(BertModel(cfg).eval(), tok, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(params=["llama", "t5"])
def tiny_backbone_dir(request, tiny_llama_dir, tiny_t5_dir) -> Path:
    """Both backbone kinds: every model test runs on decoder-only and encoder-decoder."""
    return tiny_llama_dir if request.param == "llama" else tiny_t5_dir


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the whole session (``tests/pg_cluster.py``); ``.create_database(name)``
    gives a fresh database's URL. Skips, with a warning in the summary, only where the server binaries are missing
    (``make test`` installs them through ``make postgres-deps``)."""
    import warnings

    from pg_cluster import find_bindir, start_cluster

    bindir = find_bindir()
    if bindir is None:
        reason = ("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: the PostgreSQL replica tests "
                  "did NOT run. Install them with `make postgres-deps` (Debian: apt-get install postgresql) or "
                  "set PPLUG_PG_BINDIR")
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    cluster = start_cluster(bindir)
    yield cluster
    cluster.stop()
