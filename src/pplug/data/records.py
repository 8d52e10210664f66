"""Typed records for personalization data: history items, questions, gold outputs and splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HistoryItem:
    """One past item of a user (a paper, a review, a post).

    Args:
        id: item id (unique within a profile).
        fields: the task fields, e.g. ``{"title": ..., "abstract": ...}``.
        date: ISO-like date string if known; used for recency and to keep retrieval out of the future.
    """

    id: str
    fields: dict[str, Any]
    date: str | None = None

    def get(self, name: str) -> Any:
        return self.fields[name]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, **self.fields}
        if self.date is not None:
            out["date"] = self.date
        return out


@dataclass
class Question:
    """One personalization request: a user's input and her history (profile).

    Args:
        id: question id (unique within a split).
        input: the full task input (LaMP inputs already contain the instruction).
        profile: the user's history items, oldest first where dates are known.
        user_id: the user, when the data says so (official LaMP files do not).
    """

    id: str
    input: str
    profile: list[HistoryItem]
    user_id: str | None = None

    @property
    def user_key(self) -> str:
        """A stable user key: ``user_id`` when given, else the question id (one LaMP question = one user)."""
        return self.user_id if self.user_id is not None else f"q:{self.id}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.user_id is not None:
            out["user_id"] = self.user_id
        out["input"] = self.input
        out["profile"] = [item.to_json() for item in self.profile]
        return out


@dataclass
class Split:
    """A loaded split: questions and (when available) their gold outputs.

    Args:
        task: the registered task name.
        name: split name (train/dev/test).
        questions: the questions in file order.
        golds: question id -> gold output, or None when the split has no outputs file (e.g. LaMP test).
        source: where it was loaded from (for messages).
    """

    task: str
    name: str
    questions: list[Question]
    golds: dict[str, str] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    record_index: list[int] | None = None  # per question: its record number in the source (JSONL: line)
    profile_field: str = "profile"  # what the source calls the history list (JSONL: "history")
    gold_source: str = ""  # the file holding the golds (LaMP: {split}_outputs.json)
    gold_index: dict[str, int] | None = None  # gold id -> its record number in gold_source

    def __len__(self) -> int:
        return len(self.questions)

    def gold(self, question: Question) -> str:
        if self.golds is None:
            raise KeyError(f"split '{self.name}' from {self.source} has no gold outputs")
        return self.golds[question.id]

    def limit(self, n: int | None) -> Split:
        """The first ``n`` questions (all when n is None)."""
        if n is not None and n < 0:
            raise ValueError(f"limit must be >= 0, got {n}")
        if n is None or n >= len(self.questions):
            return self
        qs = self.questions[:n]
        golds = None if self.golds is None else {q.id: self.golds[q.id] for q in qs}
        return Split(self.task, self.name, qs, golds, self.source, dict(self.meta),
                     None if self.record_index is None else self.record_index[:n], self.profile_field,
                     self.gold_source, self.gold_index)
