"""Data layer: typed records, LaMP and custom JSONL loaders, prediction writer."""

from __future__ import annotations

from pathlib import Path

from pplug.data._json import find_file
from pplug.data.custom import load_jsonl_split
from pplug.data.lamp import load_lamp_split, read_task_field, write_lamp_split, write_predictions
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
    """The registered task of a data folder: explicit name, else folder name, else the outputs' task field."""
    from pplug.tasks import get_task, has_task, task_for_lamp_field

    data_dir = Path(data_dir)
    if task is not None:
        return get_task(task).name
    if has_task(data_dir.name):
        return get_task(data_dir.name).name
    field = read_task_field(data_dir)
    if field is not None:
        return task_for_lamp_field(field, data_dir)
    raise DataError(data_dir, "cannot tell the task: pass --task NAME (see `pplug tasks`)")


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
    task_name = resolve_task(data_dir, task)
    layout = _layout(data_dir, split)
    if layout == "lamp":
        loaded = load_lamp_split(data_dir, split, task_name)
    elif layout == "jsonl":
        loaded = load_jsonl_split(find_file(data_dir, f"{split}.jsonl"), split, task_name)
    else:
        raise DataError(data_dir / f"{split}_questions.json", f"no '{split}' split in this folder "
                        f"(expected {split}_questions.json or {split}.jsonl)")
    validate_split(loaded)
    return loaded


def validate_split(split: Split) -> None:
    """Check every profile item has the fields the task renders, and golds are valid for the task."""
    from pplug.tasks import get_task

    task = get_task(split.task)
    for i, q in enumerate(split.questions):
        record = i if split.record_index is None else split.record_index[i]
        for j, item in enumerate(q.profile):
            for name in task.item_fields:
                if name not in item.fields:
                    raise DataError(split.source, f"missing field needed by task '{task.name}'", record,
                                    f"{split.profile_field}[{j}].{name}")
        if split.golds is not None:
            problem = task.check_gold(split.golds[q.id])
            if problem:
                where = split.gold_source or split.source
                index = (split.gold_index or {}).get(q.id, record)
                field = "output" if split.profile_field == "history" else "golds.output"
                raise DataError(where, f"gold output of question '{q.id}': {problem}", index, field)
