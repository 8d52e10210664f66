"""Which task is this data folder: the one owner of that decision.

Order: an explicit name (``--task``) > the folder's task file (``task.json``; missing keys inferred) >
a registered task named by the folder name or the outputs' ``task`` field, *checked against the data* >
inference from the data. Names are hints, not verdicts: a registered task the data contradicts (golds
outside its labels, inputs listing other labels, items without its fields) is skipped with a notice, so a
renamed or copied folder resolves to the same definition as the original. A folder without a task file is
inferred on the fly (with a notice to run ``pplug data init DIR`` to review and keep the result).
Tasks from files or inference are added to the registry (``define_task``) so every method finds them by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from pplug.errors import DataError, PPlugError
from pplug.task_file import TASK_FILE, TEMPLATES, TaskFileError, read_task_file, task_from_values, template_fields
from pplug.task_infer import FolderData, infer_values, is_number
from pplug.tasks import Task, define_task, get_task, has_task, is_defined_by_data, same_definition, task_names

log = logging.getLogger("pplug")


@dataclass
class Resolution:
    """A folder's task and where it came from.

    Args:
        task: the task (registered under ``task.name``).
        source: "explicit" (--task), "file" (task.json), "registry" (a registered task the data fits) or
            "inferred" (from the data).
        reasons: why: the hint that matched, or one line per inferred value.
        notices: what the user should know (a contradicted hint, an inferred task).
    """

    task: Task
    source: str
    reasons: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


_CACHE: dict[tuple, Resolution] = {}


def _signature(folder: Path) -> tuple:
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return (str(folder.resolve()), *((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))


def resolve(data_dir: str | Path, name: str | None = None) -> Resolution:
    """The task of a data folder (see the module docstring for the order); notices are logged once."""
    folder = Path(data_dir)
    if name:
        if has_task(name):
            return Resolution(get_task(name), "explicit", [f"--task {name}"])
        try:
            res = resolve(folder)
        except PPlugError:
            res = None
        if res is None or res.task.name.replace("_", "-").lower() != name.replace("_", "-").lower():
            get_task(name)  # raises: unknown task, listing the registered ones
        return res
    if not folder.is_dir():
        raise DataError(folder, "data folder not found")
    key = _signature(folder)
    if key in _CACHE:
        res = _CACHE[key]
        if res.source in ("file", "inferred"):
            define_task(res.task)  # another folder may have redefined the name since
        return res
    res = _resolve_uncached(folder)
    _CACHE[key] = res
    for notice in res.notices:
        log.warning("%s", notice)
    return res


def _resolve_uncached(folder: Path, use_file: bool = True, use_registry: bool = True) -> Resolution:
    data = FolderData(folder)
    task_file = folder / TASK_FILE
    if use_file and task_file.is_file():
        return _from_file(task_file, data)
    notices: list[str] = []
    for hint, task in _candidates(folder, data) if use_registry else []:
        problem = contradiction(task, data)
        if problem is None:
            if notices:
                notices.append(f"{folder}: using registered task '{task.name}', which the data fits")
            return Resolution(task, "registry", [f"{hint} names registered task '{task.name}' and the data fits "
                                                 "it"], notices)
        notices.append(f"{folder}: {hint} names task '{task.name}', but the data contradicts it ({problem})")
    if not data.names:
        raise DataError(folder, "no train/dev/test split files found")
    if not data.golds:
        raise DataError(folder, "cannot tell the task: no task file, no registered task fits and no gold "
                        "outputs to infer it from; write a task file or pass --task NAME (see `pplug tasks`)")
    given = {}
    if has_task(folder.resolve().name) and not is_defined_by_data(folder.resolve().name):
        given["name"] = f"{folder.resolve().name}-data"  # the folder name is a registered task it is not
    values, reasons = infer_values(data, given)
    task = define_task(task_from_values(values))
    notices.append(f"{folder}: no {TASK_FILE}; inferred a {task.kind} task '{task.name}' from the data (review "
                   f"and keep it with `pplug data init {folder}`)")
    return Resolution(task, "inferred", reasons, notices)


def resolve_without_file(data_dir: str | Path, use_registry: bool = True) -> Resolution:
    """What the folder would resolve to without its task file (``pplug data init``): a registered task the data
    fits (unless ``use_registry`` is False), else the inferred one."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(folder, "data folder not found")
    return _resolve_uncached(folder, use_file=False, use_registry=use_registry)


def _candidates(folder: Path, data: FolderData) -> list[tuple[str, Task]]:
    """Tasks registered in code that the folder name or the outputs' task field point at, in that order."""
    out: list[tuple[str, Task]] = []
    name = folder.resolve().name
    if has_task(name) and not is_defined_by_data(name):
        out.append((f"the folder name '{folder.resolve().name}'", get_task(folder.resolve().name)))
    field_value = data.task_field
    if field_value is not None:
        norm = field_value.replace("_", "-").lower()
        for n in task_names():
            if is_defined_by_data(n):
                continue  # only tasks registered in code are hints; data-defined ones belong to their folders
            t = get_task(n)
            if t.lamp_field.replace("_", "-").lower() == norm or n.replace("_", "-").lower() == norm:
                out.append((f"the outputs' task field '{field_value}'", t))
    seen: set[str] = set()
    return [(h, t) for h, t in out if not (t.name in seen or seen.add(t.name))]


def contradiction(task: Task, data: FolderData) -> str | None:
    """Why the data cannot be this task, or None when it fits.

    The data is another task when its inputs list labels the task does not have, when (with no label lists
    in the inputs) at least half of the golds are outside its labels / not ratings, when a generation task's
    golds are all in the label lists their inputs spell, or when the history items lack a field it renders.
    A few golds outside the labels are typos, not another task: validation reports them by record.
    """
    if task.kind != "generation":
        labels = set(task.labels or ())
        any_list = False
        for sp, _, q, _ in data.examples():
            listed = task.labels_in_input(q.input)
            any_list = any_list or bool(listed)
            if listed and not set(listed) <= labels:
                extra = sorted(set(listed) - labels)[:3]
                return f"an input of {sp.source} lists labels it does not have ({', '.join(extra)})"
        bad = [(sp, i, g) for sp, i, _, g in data.golds
               if g not in labels and not (task.kind == "rating" and _in_range(g, task.labels or ()))]
        if bad and not any_list and 2 * len(bad) >= len(data.golds):
            sp, i, g = bad[0]
            return f"{len(bad)} of {len(data.golds)} golds are not among its labels, e.g. '{g}' ({data.where(sp, i)})"
    elif _looks_like_classification(data):
        return "every gold is in the label list its input spells"
    if data.items:
        missing = [f for f in task.item_fields if f not in data.item_fields]
        if missing:
            return f"the history items have no field '{missing[0]}'"
    return None


def _in_range(gold: str, labels: tuple[str, ...]) -> bool:
    try:
        return float(labels[0]) <= float(gold) <= float(labels[-1])
    except (ValueError, IndexError):
        return False


def _looks_like_classification(data: FolderData) -> bool:
    """Every gold of the smallest split is in the label list its input spells (a generation task never is)."""
    from pplug.task_infer import spelled_labels

    sp = data.split(data.smallest) if data.smallest else None
    if sp is None or not sp.golds:
        return False
    for q in sp.questions:
        hit = spelled_labels(q.input)
        if not hit or sp.golds[q.id].strip() not in hit[1]:
            return False
    return True


def _from_file(path: Path, data: FolderData) -> Resolution:
    given = read_task_file(path)
    values, reasons = infer_values(data, given)
    check_against_data(path, values, data, given)
    task = task_from_values(values)
    if "name" not in given and has_task(task.name) and not is_defined_by_data(task.name) \
            and not same_definition(task, get_task(task.name)):
        task = replace(task, name=f"{task.name}-data")  # the folder is named after a registered task it is not
    try:
        task = define_task(task)
    except PPlugError as e:
        raise TaskFileError(path, "name", str(e)) from None
    inferred = [r for r in reasons if r.split(":")[0] not in given]
    return Resolution(task, "file", [f"{path}"] + [f"inferred {r}" for r in inferred])


def check_against_data(path: Path, values: dict, data: FolderData, given: dict | None = None) -> None:
    """A task file's values against the folder: fields exist, golds fit the kind and the labels."""
    fields = data.item_fields
    if data.items:
        for key in ("output_field", *TEMPLATES):  # a given output field first: inferred templates use it
            names = [values[key]] if key == "output_field" else template_fields(values[key], path, key)
            for n in names:
                if n not in fields:
                    raise TaskFileError(path, key, f"names field '{n}', which the history items do not have "
                                        f"(they have: {', '.join(fields)})")
    kind, labels = values["kind"], values.get("labels")
    for sp, i, _, gold in data.golds:
        if kind == "rating" and not is_number(gold):
            key = "kind" if given is None or "kind" in given else "labels"  # the key that made it a rating task
            raise TaskFileError(path, key, f"rating, but gold '{gold}' ({data.where(sp, i)}) is not a number")
        if kind == "classification" and gold not in [str(x).strip() for x in labels]:
            raise TaskFileError(path, "labels", f"gold '{gold}' ({data.where(sp, i)}) is not in the list")


def task_from_arg(value: str) -> Task:
    """A task named on the command line: a registered name, a task file, a data folder or a run folder."""
    path = Path(value)
    if path.is_file():
        from pplug.task_file import load_task_file

        return define_task(load_task_file(path))
    if path.is_dir():
        if (path / "config.json").is_file() and (path / TASK_FILE).is_file() and not _has_splits(path):
            from pplug.task_file import load_task_file

            return define_task(load_task_file(path / TASK_FILE))  # a run folder
        return resolve(path).task
    return get_task(value)


def _has_splits(path: Path) -> bool:
    from pplug.data import available_splits

    return bool(available_splits(path))


same_task = same_definition  # same prompts, labels and parsing, whatever the names
