"""Official LaMP files: ``{split}_questions.json`` + ``{split}_outputs.json`` (optionally ``.gz``).

Questions: a list of ``{"id", "input", "profile": [items], "user_id"?}``.
Outputs: ``{"task": "LaMP_5", "golds": [{"id", "output"}]}``. The outputs file may be absent
(official LaMP test splits have no public golds); then ``Split.golds`` is None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pplug.data._json import find_file, read_json, require
from pplug.data.records import HistoryItem, Question, Split
from pplug.errors import DataError


def parse_item(raw: Any, path: Path, index: int, where: str) -> HistoryItem:
    """One profile item; ``where`` is its dotted location for messages (e.g. ``profile[3]``)."""
    if not isinstance(raw, dict):
        raise DataError(path, f"expected an object, got {type(raw).__name__}", index, where)
    item_id = require(raw, "id", (str, int), path, index, f"{where}.")
    date = raw.get("date")
    if date is not None and not isinstance(date, (str, int)):
        raise DataError(path, f"expected str, got {type(date).__name__}", index, f"{where}.date")
    fields = {k: v for k, v in raw.items() if k not in ("id", "date")}
    return HistoryItem(id=str(item_id), fields=fields, date=None if date is None else str(date))


def parse_questions(raw: Any, path: Path) -> list[Question]:
    """Validate and convert a parsed questions file."""
    if not isinstance(raw, list):
        raise DataError(path, f"expected a JSON list of questions, got {type(raw).__name__}")
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(raw):
        qid = str(require(rec, "id", (str, int), path, i))
        if qid in seen:
            raise DataError(path, f"duplicate id '{qid}' (first at record {seen[qid]})", i, "id")
        seen[qid] = i
        text = require(rec, "input", str, path, i)
        profile_raw = require(rec, "profile", list, path, i)
        user_id = rec.get("user_id")
        if user_id is not None and not isinstance(user_id, (str, int)):
            raise DataError(path, f"expected str, got {type(user_id).__name__}", i, "user_id")
        profile = [parse_item(it, path, i, f"profile[{j}]") for j, it in enumerate(profile_raw)]
        questions.append(Question(qid, text, profile, None if user_id is None else str(user_id)))
    return questions


def parse_outputs(raw: Any, path: Path) -> tuple[str | None, dict[str, str]]:
    """Validate a parsed outputs file; returns ``(task field, id -> output)`` in file order."""
    task = require(raw, "task", str, path, None) if isinstance(raw, dict) and "task" in raw else None
    golds_raw = require(raw, "golds", list, path, None)
    golds: dict[str, str] = {}
    for i, rec in enumerate(golds_raw):
        gid = str(require(rec, "id", (str, int), path, i, "golds."))
        out = require(rec, "output", (str, int, float), path, i, "golds.")
        if gid in golds:
            raise DataError(path, f"duplicate gold id '{gid}'", i, "golds.id")
        golds[gid] = str(out)
    return task, golds


def check_pairing(questions: list[Question], golds: dict[str, str], q_path: Path, o_path: Path) -> None:
    """Every question has a gold and every gold a question; the first offender is named."""
    qids = {q.id for q in questions}
    for i, q in enumerate(questions):
        if q.id not in golds:
            raise DataError(q_path, f"question '{q.id}' has no gold output in {o_path}", i, "id")
    for j, gid in enumerate(golds):
        if gid not in qids:
            raise DataError(o_path, f"gold '{gid}' has no question in {q_path}", j, "golds.id")


def read_task_field(directory: Path) -> str | None:
    """The ``task`` field of the first outputs file found in a LaMP folder, if any."""
    for split in ("train", "dev", "test"):
        path = find_file(directory, f"{split}_outputs.json")
        if path is not None:
            raw = read_json(path)
            if isinstance(raw, dict) and isinstance(raw.get("task"), str):
                return raw["task"]
    return None


def load_lamp_split(directory: Path, split: str, task: str) -> Split:
    """Load one split of a LaMP-format folder (plain or gzip files)."""
    q_path = find_file(directory, f"{split}_questions.json")
    if q_path is None:
        raise DataError(directory / f"{split}_questions.json", "file not found")
    questions = parse_questions(read_json(q_path), q_path)
    o_path = find_file(directory, f"{split}_outputs.json")
    golds = None
    if o_path is not None:
        _, golds = parse_outputs(read_json(o_path), o_path)
        check_pairing(questions, golds, q_path, o_path)
    return Split(task=task, name=split, questions=questions, golds=golds, source=str(q_path),
                 gold_source=str(o_path or ""), gold_index={g: j for j, g in enumerate(golds or {})})


def write_lamp_split(directory: Path, split: Split, task_field: str) -> None:
    """Write a split as LaMP files (questions + outputs when golds exist)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{split.name}_questions.json", "w", encoding="utf-8") as f:
        json.dump([q.to_json() for q in split.questions], f, ensure_ascii=False, indent=1)
    if split.golds is not None:
        golds = [{"id": q.id, "output": split.golds[q.id]} for q in split.questions]
        write_predictions(directory / f"{split.name}_outputs.json", task_field, golds)


def write_predictions(path: str | Path, task_field: str, golds: list[dict[str, str]]) -> Path:
    """Write a LaMP prediction/outputs file: ``{"task": ..., "golds": [{"id", "output"}]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"task": task_field, "golds": golds}, f, ensure_ascii=False, indent=1)
    return path
