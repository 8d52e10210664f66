"""Retrievers see only the given user's profile, never items from the future of the query, and rank sensibly;
RAG prompts carry only the asking user's items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pplug.data.records import HistoryItem, Question
from pplug.methods.baselines import RagPrompter, fit_example, truncate_tokens
from pplug.retrieval import (
    BM25Retriever,
    DenseRetriever,
    RecencyRetriever,
    build_retriever,
    by_recency,
    most_recent,
    visible,
)
from pplug.tasks import get_task

TASK = get_task("synth_title")


def item(i: int, text: str, date: str | None) -> HistoryItem:
    return HistoryItem(f"i{i}", {"text": text, "title": f"title {i}"}, date)


PROFILE = [item(0, "the cat sat on the mat", "2020-01-01"), item(1, "dogs run in the park", "2020-02-01"),
           item(2, "a cat and a dog play", "2020-03-01"), item(3, "stock markets fell sharply", "2020-04-01")]


class FakeEncoder:
    """Bag-of-words vectors over a fixed vocabulary (L2-normalized), like a cached encoder."""

    dim = 8
    vocab = ["cat", "mat", "dog", "dogs", "park", "stock", "markets", "play"]

    def encode(self, texts):
        vecs = np.array([[float(w in t.split()) for w in self.vocab] for t in texts]) + 1e-3
        return torch.tensor(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), dtype=torch.float32)


def test_bm25_ranks_by_relevance():
    got = BM25Retriever(TASK).retrieve("cat on a mat", PROFILE, k=2)
    assert [it.id for it in got] == ["i0", "i2"]


def test_dense_ranks_by_cosine():
    got = DenseRetriever(TASK, FakeEncoder()).retrieve("stock markets", PROFILE, k=1)
    assert [it.id for it in got] == ["i3"]


def test_recency_takes_the_latest_by_date():
    shuffled = [PROFILE[2], PROFILE[0], PROFILE[3], PROFILE[1]]
    assert [it.id for it in RecencyRetriever().retrieve("", shuffled, k=2)] == ["i3", "i2"]


@pytest.mark.parametrize("name", ["bm25", "dense", "recency"])
def test_never_retrieves_from_the_future(name):
    r = build_retriever(name, TASK, FakeEncoder())
    got = r.retrieve("stock markets fell cat", PROFILE, k=4, before="2020-03-01")
    assert {it.id for it in got} == {"i0", "i1"}  # strictly older than the query's date
    assert visible(PROFILE, "2020-01-01") == []


def test_unknown_retriever_is_refused():
    with pytest.raises(Exception, match="unknown retriever"):
        build_retriever("magic", TASK)


def test_rag_prompt_holds_only_the_users_own_items(tiny_tokenizer):
    alice = Question("qa", "Generate a title for the following article: cat news", PROFILE[:2], "alice")
    bob = Question("qb", "Generate a title for the following article: cat news",
                   [item(9, "bob secret cat story", "2020-01-05")], "bob")
    prompter = RagPrompter(TASK, BM25Retriever(TASK), k=4, item_tokens=400, tokenizer=tiny_tokenizer)
    text_a, text_b = prompter.text(alice), prompter.text(bob)
    assert "title 0" in text_a and "title 1" in text_a and "bob secret" not in text_a
    assert "bob secret" in text_b and "title 0" not in text_b
    assert text_a.endswith(alice.input)


def test_each_item_is_truncated_to_its_token_share(tiny_tokenizer):
    long = "cat " * 200
    assert len(tiny_tokenizer(truncate_tokens(tiny_tokenizer, long, 10), add_special_tokens=False).input_ids) <= 10
    assert truncate_tokens(tiny_tokenizer, "short", 10) == "short"


@pytest.mark.parametrize("task_name, fields, output", [
    ("LaMP-2", {"description": "the cat sat on the mat " * 40, "tag": "dark comedy"}, '"dark comedy"'),
    ("LaMP-2N", {"title": "cat news", "text": "the dog ran in the park " * 40, "category": "women"}, '"women"'),
    ("LaMP-3", {"text": "the cat sat on the mat " * 40, "score": 4}, "4 is the score"),
])
def test_a_cut_example_keeps_its_output_field(tiny_tokenizer, task_name, fields, output):
    task = get_task(task_name)
    it = HistoryItem("h", fields)
    shown = fit_example(task, it, tiny_tokenizer, 40)
    assert output in shown and shown != task.render_example(it)
    assert len(tiny_tokenizer(shown, add_special_tokens=False).input_ids) <= 44  # about the share
    if task_name == "LaMP-2N":
        assert "cat news" in shown  # a short field is kept whole; the long one gives way


def test_an_example_without_other_fields_is_cut_whole(tiny_tokenizer):
    task = get_task("LaMP-7")
    shown = fit_example(task, HistoryItem("h", {"text": "the cat sat on the mat " * 40}), tiny_tokenizer, 20)
    assert shown.startswith('"the cat') and len(tiny_tokenizer(shown, add_special_tokens=False).input_ids) <= 20


def test_most_recent_by_date_else_file_order():
    dated = [item(0, "a", "2021-05-01"), item(1, "b", "2019-01-01"), item(2, "c", "2022-01-01"),
             item(3, "d", "2020-01-01")]
    assert most_recent(dated, 2) == [0, 2]  # the two latest dates, in profile order (not the last two in the file)
    undated = [item(i, "x", None) for i in range(4)]
    assert most_recent(undated, 2) == [2, 3] and most_recent(undated, 0) == [0, 1, 2, 3]
    assert by_recency(dated) == [1, 3, 0, 2]


def test_rag_prompt_can_show_only_the_users_past_outputs(tiny_tokenizer):
    alice = Question("qa", "Generate a title for the following article: cat news", PROFILE[:2], "alice")
    whole = RagPrompter(TASK, BM25Retriever(TASK), k=4, item_tokens=400, tokenizer=tiny_tokenizer).text(alice)
    outputs = RagPrompter(TASK, BM25Retriever(TASK), k=4, item_tokens=400, tokenizer=tiny_tokenizer,
                          show="output").text(alice)
    shown = outputs[: outputs.index(alice.input)]
    assert "title 0" in shown and "title 1" in shown and len(outputs) < len(whole)
    for it in PROFILE[:2]:  # the items' other fields are left out
        assert all(w not in shown for w in str(it.fields["text"]).split() if w not in {"cat", "title"})
    assert outputs.endswith(alice.input)
    from pplug.config import RunConfig, apply_override, validate

    config = RunConfig()
    apply_override(config, "retrieval.show=abstract")
    with pytest.raises(Exception, match="show"):
        validate(config)
