"""Infer a task definition from a data folder: kind, labels, output field, templates, query start.

Rules (each inferred value comes with a one-line reason, which ``pplug data init`` prints):
- kind: every input spells a label list (``tags: [a, b, c]``) and the golds are in it -> classification; the
  golds are integers 1..5 -> rating; else generation. "The golds" means 90% of them: a few typos do not change
  the kind, validation then names them by file and record.
- labels: the union of the inputs' bracketed lists (first seen first), else the distinct golds; rating 1..5.
- output_field: the item field whose values look like the golds (in the labels; numeric; closest length).
- query_marker: the end of the instruction all inputs share (``... article:``); none when they share none.
- templates: from the field names, e.g. ``{category}: {title} {text}``.
Values given in a task file are kept and steer the rest (a given ``kind`` picks the labels rule).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pplug.data import available_splits
from pplug.data.records import Question, Split
from pplug.errors import DataError

LIST_RE = re.compile(r"([A-Za-z][\w ]{0,30}?:)\s*\[([^\]]*)\]")  # "categories: [a, b, c]"
MAX_ITEMS = 5000  # history items looked at for fields and output values
MOSTLY = 0.9  # share of golds that must fit a kind: the rest are typos that validation reports by record


@dataclass
class FolderData:
    """A data folder's splits, loaded lazily and only once (task-free: nothing is checked against a task)."""

    folder: Path
    _loaded: dict[str, Split] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        from pplug.data import _load_raw

        if name not in self._loaded:
            self._loaded[name] = _load_raw(self.folder, name, "")
        return self._loaded[name]

    @cached_property
    def names(self) -> list[str]:
        return available_splits(self.folder)

    @cached_property
    def task_field(self) -> str | None:
        from pplug.data.lamp import read_task_field

        return read_task_field(self.folder)

    def examples(self) -> list[tuple[Split, int, Question, str | None]]:
        """Every question of every split: (split, position, question, gold or None)."""
        out = []
        for name in self.names:
            sp = self.split(name)
            out += [(sp, i, q, None if sp.golds is None else sp.golds[q.id]) for i, q in enumerate(sp.questions)]
        return out

    @cached_property
    def golds(self) -> list[tuple[Split, int, Question, str]]:
        return [(sp, i, q, g.strip()) for sp, i, q, g in self.examples() if g is not None]

    @cached_property
    def smallest(self) -> str | None:
        """The split with the smallest files (cheap checks read only this one)."""
        from pplug.data._json import find_file

        def size(name: str) -> int:
            paths = [find_file(self.folder, f"{name}{s}") for s in ("_questions.json", ".jsonl")]
            return sum(p.stat().st_size for p in paths if p is not None)

        return min(self.names, key=size) if self.names else None

    @cached_property
    def items(self) -> list[dict[str, Any]]:
        """Up to MAX_ITEMS history items, the smallest split's first."""
        out: list[dict[str, Any]] = []
        for name in sorted(self.names, key=lambda n: n != self.smallest):
            out += [it.fields for q in self.split(name).questions for it in q.profile]
            if len(out) >= MAX_ITEMS:
                break
        return out[:MAX_ITEMS]

    @cached_property
    def item_fields(self) -> list[str]:
        """Fields of the history items, in first-seen order."""
        return list(dict.fromkeys(k for it in self.items for k in it))

    def where(self, sp: Split, i: int) -> str:
        """``file, record N`` of a gold (for messages)."""
        index = (sp.gold_index or {}).get(sp.questions[i].id, i)
        return f"{sp.gold_source or sp.source}, record {index}"


def spelled_labels(text: str) -> tuple[str, list[str]] | None:
    """The (marker, labels) an input spells as ``marker [a, b, ...]`` (at least two labels), if any."""
    for m in LIST_RE.finditer(text):
        labels = [s.strip() for s in m.group(2).split(",") if s.strip()]
        if len(labels) >= 2:
            return m.group(1).strip().split()[-1], labels
    return None


def _is_rating(value: str) -> bool:
    try:
        v = float(value)
    except ValueError:
        return False
    return v.is_integer() and 1 <= v <= 5


def _words(values: list[str]) -> float:
    return statistics.mean(len(v.split()) for v in values) if values else 0.0


def infer_values(data: FolderData, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Task-file values for ``data``: ``given`` ones kept, the others inferred.

    Returns:
        (values for every task-file key, one reason per inferred key).
    """
    v, why = dict(given), []
    golds = data.golds
    v.setdefault("name", data.folder.resolve().name)
    lists = [spelled_labels(q.input) for _, _, q, _ in data.examples()]
    markers = Counter(m for m, _ in filter(None, lists))
    marker = markers.most_common(1)[0][0] if markers else None
    if "kind" not in v and v.get("labels"):  # given labels: a label task; numbers make a rating scale
        v["kind"] = "rating" if all(is_number(str(x)) for x in v["labels"]) else "classification"
        why.append(f"kind: {v['kind']}: the task file gives labels" + (", all numbers" if v["kind"] == "rating"
                                                                        else ""))
    if "kind" not in v:
        if not golds:
            raise DataError(data.folder, "cannot tell the task: no gold outputs to infer it from; write a task "
                            "file (see `pplug data init`) or pass --task NAME")
        spelled = {id(q): spelled_labels(q.input) for _, _, q, _ in golds}
        in_list = sum(bool(spelled[id(q)]) and g in spelled[id(q)][1] for _, _, q, g in golds)
        ratings = sum(_is_rating(g) for _, _, _, g in golds)
        if marker and all(spelled.values()) and in_list >= MOSTLY * len(golds):
            v["kind"] = "classification"
            why.append(f"kind: classification: {in_list} of the {len(golds)} golds are in the label list their "
                       f"input spells after '{marker}'" + ("" if in_list == len(golds) else
                                                          " (validation names the others)"))
        elif ratings >= MOSTLY * len(golds):
            v["kind"] = "rating"
            why.append(f"kind: rating: {ratings} of the {len(golds)} golds are whole numbers 1..5")
        else:
            v["kind"] = "generation"
            why.append("kind: generation: the golds are free text (not in a label list spelled in the inputs, "
                       "not ratings 1..5)")
    kind = v["kind"]
    if kind != "generation" and "label_marker" not in v:
        v["label_marker"] = marker
        if marker:
            why.append(f"label_marker: '{marker}': {sum(markers.values())} inputs list their labels after it")
    v.setdefault("label_marker", None)
    if kind != "generation" and "labels" not in v:
        v["labels"] = _infer_labels(data, kind, lists, why)
    if kind == "generation":
        v["labels"] = None
    if "output_field" not in v:
        v["output_field"] = _infer_output_field(data, kind, v["labels"], why)
    if "query_marker" not in v:
        v["query_marker"] = _infer_query_marker([q.input for _, _, q, _ in data.examples()], why)
    _infer_templates(data, v, why)
    v.setdefault("lamp_field", data.task_field or v["name"])
    v.setdefault("description", f"defined by the data in {data.folder.resolve().name}")
    return v, why


def _infer_labels(data: FolderData, kind: str, lists: list, why: list[str]) -> list[str]:
    golds = data.golds
    if kind == "rating":
        values = sorted({int(float(g)) for _, _, _, g in golds if _is_rating(g)} | {1, 5})
        why.append("labels: the rating scale 1..5")
        return [str(x) for x in range(values[0], values[-1] + 1)]
    spelled = list(dict.fromkeys(lab for hit in lists if hit for lab in hit[1]))
    if spelled:
        why.append(f"labels: the {len(spelled)} labels the inputs list (first seen first)")
        return spelled
    labels = sorted({g for _, _, _, g in golds})
    if not labels:
        raise DataError(data.folder, "cannot infer the labels: no gold outputs and no label list in the inputs; "
                        "write 'labels' in the task file")
    why.append(f"labels: the {len(labels)} distinct gold outputs (sorted)")
    return labels


def _infer_output_field(data: FolderData, kind: str, labels: list[str] | None, why: list[str]) -> str:
    items = data.items
    fields = [f for f in data.item_fields if all(f in it for it in items)] or data.item_fields
    if not fields:
        raise DataError(data.folder, "cannot infer 'output_field': the history items have no fields; "
                        "write it in the task file")

    def values(f: str) -> list[str]:
        return [str(it[f]).strip() for it in items if f in it]

    if kind == "classification":
        allowed = set(labels or [])
        best = max(fields, key=lambda f: sum(x in allowed for x in values(f)) / max(1, len(values(f))))
        why.append(f"output_field: '{best}': its values are labels most often")
    elif kind == "rating":
        best = max(fields, key=lambda f: sum(is_number(x) for x in values(f)) / max(1, len(values(f))))
        why.append(f"output_field: '{best}': its values are numbers most often")
    else:
        target = _words([g for _, _, _, g in data.golds])
        best = min(fields, key=lambda f: abs(_words(values(f)) - target))
        why.append(f"output_field: '{best}': its length ({_words(values(best)):.1f} words) is closest to the "
                   f"golds' ({target:.1f})")
    return best


def is_number(x: str) -> bool:
    """Whether ``x`` parses as a float (a rating value)."""
    try:
        float(x)
    except ValueError:
        return False
    return True


def _infer_query_marker(inputs: list[str], why: list[str]) -> str | None:
    """The tail of the instruction every input shares, ending at its last ':' (``article:``)."""
    if not inputs:
        return None
    prefix = inputs[0]
    for text in inputs[1:]:
        n = 0
        while n < min(len(prefix), len(text)) and prefix[n] == text[n]:
            n += 1
        prefix = prefix[:n]
    if ":" not in prefix:
        why.append("query_marker: none: the inputs share no instruction ending in ':' (the whole input is "
                   "the query)")
        return None
    head = prefix[: prefix.rfind(":") + 1]
    ends = [head.rfind("]")] + [head.rfind(s) + len(s) - 1 for s in (". ", "? ", "! ", "\n") if s in head]
    cut = max(ends)  # the instruction's last sentence (or what follows a label list)
    marker = head[cut + 1:].strip() or head.strip()
    why.append(f"query_marker: '{marker}': every input starts with the same instruction ending there")
    return marker


def _infer_templates(data: FolderData, v: dict[str, Any], why: list[str]) -> None:
    out = v["output_field"]
    others = [f for f in data.item_fields if f != out and all(isinstance(it.get(f, ""), str) for it in data.items)]
    body = " ".join(f"{{{f}}}" for f in others)
    noun = out.replace("_", " ")
    if "item_text" not in v:
        v["item_text"] = f"{{{out}}}: {body}" if v["kind"] != "generation" and body else \
            (f"{body} {{{out}}}" if body else f"{{{out}}}")
        why.append(f"item_text: '{v['item_text']}': the item fields, output first" if v["kind"] != "generation"
                   else f"item_text: '{v['item_text']}': the item fields")
    if "item_example" not in v:
        v["item_example"] = f'the {noun} for "{body}" is "{{{out}}}"' if body else f'"{{{out}}}"'
        why.append(f"item_example: '{v['item_example']}': from the field names")
    if "pair_input" not in v:
        v["pair_input"] = _pair_prefix(data, v) + (body or f"{{{out}}}")
        shown = v["pair_input"] if len(v["pair_input"]) <= 80 else v["pair_input"][:77] + "..."
        why.append(f"pair_input: '{shown}': a real input's instruction, then the item fields")


def _pair_prefix(data: FolderData, v: dict[str, Any]) -> str:
    """The instruction of the first input (up to its query marker), its label list set to the task's labels."""
    marker = v.get("query_marker")
    if not marker:
        return ""
    for _, _, q, _ in data.examples():
        pos = q.input.rfind(marker)
        if pos >= 0:
            head = q.input[: pos + len(marker)]
            if v.get("labels") and v.get("label_marker"):
                head = re.sub(re.escape(v["label_marker"]) + r"\s*\[[^\]]*\]",
                              lambda _: f"{v['label_marker']} [{', '.join(v['labels'])}]", head)
            return head.replace("{", "{{").replace("}", "}}") + " "
    return ""

