"""The custom JSONL format: one user-task example per line, in ``{split}.jsonl`` (optionally ``.gz``).

Each line is an object::

    {"id": "q1",               # optional; default "<split>-<line>"
     "user_id": "alice",       # required
     "input": "Generate a title for the following abstract of a paper: ...",
     "output": "My Title",     # required for train/dev; optional for prediction-only splits
     "history": [{"id": "h1", "date": "2021-03-01", "title": "...", "abstract": "..."}]}

History items use the same fields as the task's LaMP profile items (see ``pplug.tasks``).
"""

from __future__ import annotations

from pathlib import Path

from pplug.data._json import iter_jsonl, require
from pplug.data.lamp import parse_item
from pplug.data.records import Question, Split
from pplug.errors import DataError


def load_jsonl_split(path: Path, split: str, task: str) -> Split:
    """Load a custom JSONL split file.

    Returns:
        a Split whose golds hold the outputs; golds is None only when no line has an output.
    """
    questions: list[Question] = []
    lines: list[int] = []
    golds: dict[str, str] = {}
    seen: dict[str, int] = {}
    missing_output: int | None = None
    for lineno, rec in iter_jsonl(path):
        qid = str(rec.get("id", f"{split}-{lineno}")) if isinstance(rec, dict) else ""
        user = str(require(rec, "user_id", (str, int), path, lineno))
        text = require(rec, "input", str, path, lineno)
        history = require(rec, "history", list, path, lineno)
        if qid in seen:
            raise DataError(path, f"duplicate id '{qid}' (first at line {seen[qid]})", lineno, "id")
        seen[qid] = lineno
        profile = [parse_item(it, path, lineno, f"history[{j}]") for j, it in enumerate(history)]
        questions.append(Question(qid, text, profile, user))
        lines.append(lineno)
        if "output" in rec:
            golds[qid] = str(require(rec, "output", (str, int, float), path, lineno))
        elif missing_output is None:
            missing_output = lineno
    if not questions:
        raise DataError(path, "no examples in file")
    if golds and missing_output is not None:
        raise DataError(path, "missing field (other lines have outputs)", missing_output, "output")
    return Split(task=task, name=split, questions=questions, golds=golds or None, source=str(path),
                 record_index=lines, profile_field="history", gold_source=str(path),
                 gold_index={q.id: n for q, n in zip(questions, lines, strict=True)})
