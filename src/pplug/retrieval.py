"""Retrievers over ONE user's own profile: BM25 (bm25s), dense (encoder cosine, cached), recency.

Retrieval only ever sees the profile it is given (never another user's items) and, when ``before`` is
set, only items strictly older than that date (never the future of the query).
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from pplug.data.records import HistoryItem
from pplug.errors import PPlugError
from pplug.tasks import Task

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def visible(profile: list[HistoryItem], before: str | None) -> list[HistoryItem]:
    """Items dated strictly before ``before`` (items without a date are kept only when before is None)."""
    if before is None:
        return list(profile)
    return [it for it in profile if it.date is not None and it.date < before]


def by_recency(profile: list[HistoryItem]) -> list[int]:
    """Indices of the profile from oldest to newest: by date when every item has one (ties keep file
    order), else file order (official LaMP profiles are not sorted by date)."""
    order = list(range(len(profile)))
    if all(it.date is not None for it in profile):
        order.sort(key=lambda i: profile[i].date)  # type: ignore[arg-type,return-value]
    return order


def most_recent(profile: list[HistoryItem], n: int | None) -> list[int]:
    """Indices of the ``n`` most recent items (see `by_recency`), in profile order; all when n is falsy."""
    if not n or len(profile) <= n:
        return list(range(len(profile)))
    return sorted(by_recency(profile)[-n:])


class Retriever(Protocol):
    def retrieve(self, query: str, profile: list[HistoryItem], k: int,
                 before: str | None = None) -> list[HistoryItem]: ...


class BM25Retriever:
    """Okapi BM25 (the ``bm25s`` package) over the rendered items of one profile."""

    def __init__(self, task: Task):
        self.task = task

    def retrieve(self, query: str, profile: list[HistoryItem], k: int,
                 before: str | None = None) -> list[HistoryItem]:
        import bm25s

        items = visible(profile, before)
        if not items or k <= 0:
            return []
        docs = [words(self.task.render_item(it)) or ["<empty>"] for it in items]
        index = bm25s.BM25()
        index.index(docs, show_progress=False)
        q = words(query) or ["<empty>"]
        scores = index.get_scores(q)  # [n]
        order = sorted(range(len(items)), key=lambda i: (-scores[i], -i))  # ties: most recent first
        return [items[i] for i in order[:k]]


class DenseRetriever:
    """Cosine similarity of encoder embeddings (history items come from the embedding cache)."""

    def __init__(self, task: Task, encoder):
        self.task, self.encoder = task, encoder

    def retrieve(self, query: str, profile: list[HistoryItem], k: int,
                 before: str | None = None) -> list[HistoryItem]:
        items = visible(profile, before)
        if not items or k <= 0:
            return []
        vecs = self.encoder.encode([query] + [self.task.render_item(it) for it in items]).numpy()
        sims = vecs[1:] @ vecs[0]  # [n]
        order = np.lexsort((-np.arange(len(items)), -sims))
        return [items[i] for i in order[:k]]


class RecencyRetriever:
    """The k most recent items (by date when all items have one, else profile order)."""

    def retrieve(self, query: str, profile: list[HistoryItem], k: int,
                 before: str | None = None) -> list[HistoryItem]:
        items = visible(profile, before)
        return [items[i] for i in reversed(by_recency(items))][:k] if k > 0 else []


RETRIEVERS = ("bm25", "dense", "recency")


def build_retriever(name: str, task: Task, encoder=None) -> Retriever:
    """A retriever by name; ``dense`` needs the (cached) encoder."""
    if name == "bm25":
        return BM25Retriever(task)
    if name == "dense":
        if encoder is None:
            raise PPlugError("the dense retriever needs an encoder")
        return DenseRetriever(task, encoder)
    if name == "recency":
        return RecencyRetriever()
    raise PPlugError(f"unknown retriever '{name}'; use one of {RETRIEVERS}")
