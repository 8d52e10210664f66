"""Score LaMP prediction files against gold files with the task's official metrics."""

from __future__ import annotations

from pathlib import Path

from pplug.data._json import read_json
from pplug.data.lamp import parse_outputs
from pplug.errors import DataError, PPlugError
from pplug.metrics import score
from pplug.tasks import Task


def score_predictions(task: Task, golds: dict[str, str], preds: dict[str, str]) -> dict[str, float]:
    """Metrics of ``preds`` against ``golds`` (both id -> output; the id sets must be equal)."""
    missing = [i for i in golds if i not in preds]
    extra = [i for i in preds if i not in golds]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} gold id(s) without prediction (e.g. '{missing[0]}')")
        if extra:
            parts.append(f"{len(extra)} prediction id(s) without gold (e.g. '{extra[0]}')")
        raise PPlugError("id sets differ: " + "; ".join(parts))
    ids = list(golds)
    try:
        return score(task.kind, [golds[i] for i in ids], [preds[i] for i in ids], task.labels)
    except ValueError as e:
        raise PPlugError(str(e)) from None


def score_files(task_name: str, golds_path: str | Path, preds_path: str | Path) -> dict[str, float]:
    """``pplug score``: metrics of a LaMP prediction file against a LaMP outputs file.

    Args:
        task_name: a registered task, a task file, a data folder (its task) or a run folder (its task.json).
    """
    from pplug.task_resolve import task_from_arg

    task = task_from_arg(task_name)
    gp, pp = Path(golds_path), Path(preds_path)
    for p in (gp, pp):
        if not p.is_file():
            raise DataError(p, "file not found")
    _, golds = parse_outputs(read_json(gp), gp)
    _, preds = parse_outputs(read_json(pp), pp)
    try:
        return score_predictions(task, golds, preds)
    except PPlugError as e:
        raise PPlugError(f"{pp} vs {gp}: {e}") from None
