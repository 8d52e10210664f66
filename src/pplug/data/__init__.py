"""Data layer: typed records, LaMP and custom JSONL loaders, prediction writer."""

from __future__ import annotations

from pathlib import Path

from pplug.data._json import find_file
from pplug.data.custom import load_jsonl_split
from pplug.data.lamp import load_lamp_split, write_lamp_split, write_predictions
from pplug.data.records import HistoryItem, Question, Split
from pplug.errors import DataError

SPLITS = ("train", "dev", "test")

__all__ = [
    "HistoryItem", "Question", "Split", "SPLITS", "available_splits", "load_split", "resolve_task",
    "write_lamp_split", "write_predictions", "validate_split",
]


def _layout(data_dir: Path, split: str) -> str | None:
    if find_file(data_dir, f"{split}_questions.json") is not None:
        return "lamp"
    if find_file(data_dir, f"{split}.jsonl") is not None:
        return "jsonl"
    return None


def available_splits(data_dir: str | Path) -> list[str]:
    """Which of train/dev/test exist in a data folder (LaMP or JSONL layout)."""
    data_dir = Path(data_dir)
    return [s for s in SPLITS if _layout(data_dir, s) is not None]


def resolve_task(data_dir: str | Path, task: str | None = None) -> str:
    """The task name of a data folder (``pplug.task_resolve.resolve`` decides; this returns its name)."""
    from pplug.task_resolve import resolve

    return resolve(data_dir, task).task.name


def _load_raw(data_dir: Path, split: str, task_name: str) -> Split:
    """One split as stored, checked for structure but not against a task."""
    layout = _layout(data_dir, split)
    if layout == "lamp":
        return load_lamp_split(data_dir, split, task_name)
    if layout == "jsonl":
        return load_jsonl_split(find_file(data_dir, f"{split}.jsonl"), split, task_name)
    raise DataError(data_dir / f"{split}_questions.json", f"no '{split}' split in this folder "
                    f"(expected {split}_questions.json or {split}.jsonl)")


def load_split(data_dir: str | Path, split: str, task: str | None = None) -> Split:
    """Load and validate one split of a data folder.

    Args:
        data_dir: a folder with LaMP files (``{split}_questions.json`` + ``{split}_outputs.json``, or
            ``.gz``) or custom ``{split}.jsonl``.
        split: train, dev or test.
        task: registered task name; inferred from the folder when None.

    Returns:
        the Split, with every profile item checked for the fields its task needs.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder not found")
    loaded = _load_raw(data_dir, split, resolve_task(data_dir, task))
    validate_split(loaded)
    return loaded


def validate_split(split: Split) -> None:
    """Check every profile item has the fields the task renders, inputs list only the task's labels, and
    golds are valid for the task (and among the labels their input lists)."""
    from pplug.tasks import get_task

    task = get_task(split.task)
    for i, q in enumerate(split.questions):
        record = i if split.record_index is None else split.record_index[i]
        for j, item in enumerate(q.profile):
            for name in task.item_fields:
                if name not in item.fields:
                    raise DataError(split.source, f"missing field needed by task '{task.name}'", record,
                                    f"{split.profile_field}[{j}].{name}")
        listed = task.labels_in_input(q.input) if task.kind != "generation" else None
        if listed and task.labels is not None and not set(listed) <= set(task.labels):
            raise DataError(split.source, f"the input lists labels {listed}, task '{task.name}' has "
                            f"{list(task.labels)}", record, "input")
        if split.golds is not None:
            problem = task.check_gold(split.golds[q.id])
            if problem is None and listed and split.golds[q.id].strip() not in listed:
                raise DataError(split.source, f"the input lists labels {listed}, but its gold output is "
                                f"'{split.golds[q.id].strip()}'", record, "input")
            if problem:
                where = split.gold_source or split.source
                index = (split.gold_index or {}).get(q.id, record)
                field = "output" if split.profile_field == "history" else "golds.output"
                raise DataError(where, f"gold output of question '{q.id}': {problem}", index, field)
