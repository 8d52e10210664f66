"""The task file: ``task.json`` beside the splits declares a task, so a new task needs no code.

Every key is optional; a missing key is inferred from the data (see ``pplug.task_infer``), so a minimal
file is ``{"kind": "classification"}``. Keys (documented with a worked example in ``docs/tasks.md``)::

    name          task name (default: the folder name)
    kind          classification | rating | generation
    labels        the label list (classification, rating), in the order metrics report them
    output_field  the history-item field that is an item's output (e.g. "tag")
    item_text     template: a history item as the encoder and retrievers see it ("{tag}: {description}")
    item_example  template: a retrieved history item shown in a prompt, with its output
    pair_input    template: a history item turned into a task input (OPPU / task-LoRA training)
    query_marker  the query (what encoders and retrievers see) is the input after this text's last occurrence
    label_marker  an input lists its own labels as ``<label_marker> [a, b, c]``
    lamp_field    the ``task`` field written into prediction files (default: the outputs' field, else name)
    description   one line for ``pplug tasks``

Templates are ``str.format`` strings over an item's fields. Unknown keys and bad values are refused with
a one-line error naming the file and the key.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from pplug.errors import PPlugError
from pplug.tasks import KINDS, Task

TASK_FILE = "task.json"
TEMPLATES = ("item_text", "item_example", "pair_input")
KEYS = ("name", "kind", "labels", "output_field", *TEMPLATES, "query_marker", "label_marker", "lamp_field",
        "description")
_TASK_ATTR = {"output_field": "pair_output"}  # file key -> Task attribute where the names differ


class TaskFileError(PPlugError):
    """A task file is malformed; the message names the file and the key."""

    def __init__(self, path: object, key: str | None, message: str):
        super().__init__(f"{path}" + (f", key '{key}'" if key else "") + f": {message}")


def template_fields(template: str, path: object = "", key: str = "") -> list[str]:
    """The item fields a template names (``"{title}: {text}"`` -> ``["title", "text"]``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        hint = "write a literal brace as {{ or }}"
        raise TaskFileError(path, key, f"bad template {template!r}: {e} ({hint})") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise TaskFileError(path, key, f"bad template {template!r}: '{{{name}}}' is not an item field name")
        names.append(name)
    return names


def read_task_file(path: Path) -> dict[str, Any]:
    """The checked keys of a task file (only those present); types and values are checked, fields are not."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskFileError(path, None, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(path, None, f"cannot read file: {e}") from None
    if not isinstance(raw, dict):
        raise TaskFileError(path, None, f"expected a JSON object, got {type(raw).__name__}")
    for key in raw:
        if key not in KEYS:
            raise TaskFileError(path, key, f"unknown key (known keys: {', '.join(KEYS)})")
    for key, value in raw.items():
        nullable = key in ("query_marker", "label_marker")
        if key == "labels":
            _check_labels(value, path)
        elif not (isinstance(value, str) or nullable and value is None):
            raise TaskFileError(path, key, f"expected a string{' or null' if nullable else ''}, "
                                f"got {type(value).__name__}")
        elif key in TEMPLATES:
            template_fields(value, path, key)
    if "kind" in raw and raw["kind"] not in KINDS:
        raise TaskFileError(path, "kind", f"'{raw['kind']}' is not a kind; use one of {', '.join(KINDS)}")
    if "labels" in raw and raw.get("kind") == "generation":
        raise TaskFileError(path, "labels", "a generation task has no labels (drop the key or change 'kind')")
    for key in ("name", "output_field"):
        if key in raw and not raw[key].strip():
            raise TaskFileError(path, key, "must not be empty")
    return raw


def _check_labels(value: Any, path: Path) -> None:
    if not isinstance(value, list) or not value:
        raise TaskFileError(path, "labels", "expected a non-empty list of strings")
    for lab in value:
        if not isinstance(lab, str | int) or isinstance(lab, bool) or not str(lab).strip():
            raise TaskFileError(path, "labels", f"expected non-empty strings, got {lab!r}")
    if len({str(v).strip() for v in value}) != len(value):
        raise TaskFileError(path, "labels", "labels must be distinct")


def task_to_json(task: Task) -> dict[str, Any]:
    """A task as a complete task file (every key written)."""
    out: dict[str, Any] = {"name": task.name, "kind": task.kind}
    if task.labels is not None:
        out["labels"] = list(task.labels)
    out |= {"output_field": task.pair_output, "item_text": task.item_text, "item_example": task.item_example,
            "pair_input": task.pair_input, "query_marker": task.query_marker, "label_marker": task.label_marker,
            "lamp_field": task.lamp_field, "description": task.description}
    return out


def task_from_values(values: dict[str, Any]) -> Task:
    """A Task from a complete set of task-file values (file keys)."""
    kw = {_TASK_ATTR.get(k, k): v for k, v in values.items()}
    if kw.get("labels") is not None:
        kw["labels"] = tuple(str(v).strip() for v in kw["labels"])
    name, kind = kw.pop("name"), kw.pop("kind")
    return Task(name, kind, **kw)


def write_task_file(path: Path, task: Task) -> Path:
    """Write ``task`` as a complete, reviewable task file."""
    path.write_text(json.dumps(task_to_json(task), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_task_file(path: Path) -> Task:
    """A complete task file (as written beside a run's weights) as a Task; every key must be present."""
    raw = read_task_file(path)
    for key in ("name", "kind", "output_field", *TEMPLATES):
        if key not in raw:
            raise TaskFileError(path, key, "missing key")
    values = {k: raw.get(k) for k in KEYS}
    values["lamp_field"] = values["lamp_field"] or raw["name"]
    values["description"] = values["description"] or ""
    return task_from_values(values)
