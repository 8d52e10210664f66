"""How much does a user's own history say about her next output, beyond any other user's history? No LLM.

For each question of a split, the gold output is compared with the outputs of the user's own history items and
with those of another user's history (the same pairing as ``pplug:swap_history``: the next question's user):

- ``coverage``: the share of the gold output's words that occur in the history's outputs;
- ``content coverage``: the same over words outside the 50 most frequent words of the train outputs (the data's
  own stopwords, any language);
- ``novel coverage``: the same over content words that are not in the input either (what the history could add
  beyond the input itself; nan-skipped when the gold has none);
- ``best item R-1``: the ROUGE-1 of the closest single past output (an oracle: the gold picks the item);
- ``nearest item R-1``: ROUGE-1 of the output of the item nearest to the input (word overlap; the bench's
  heuristic uses the encoder).

If the own-history figures are no higher than another user's, the history carries no user-specific lexical
signal about the output: a persona built from it cannot raise the lexical metric, on any backbone.

Usage: python scripts/history_signal.py --data DIR [--split dev] [--limit N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from pplug.bench.significance import interval_text, paired_bootstrap
from pplug.data import load_split, resolve_task
from pplug.heuristics import nearest_item_output
from pplug.methods.pplug import swapped_profiles
from pplug.metrics import per_question
from pplug.tasks import get_task

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def coverage(gold: str, outputs: list[str], skip: set[str]) -> float:
    """Share of the gold's words (not in ``skip``) that occur among ``outputs``' words; nan without any."""
    target = [w for w in words(gold) if w not in skip]
    if not target:
        return float("nan")
    seen = {w for o in outputs for w in words(o)}
    return sum(w in seen for w in target) / len(target)


def best_item(gold: str, outputs: list[str]) -> float:
    if not outputs:
        return 0.0
    return float(per_question("generation", [gold] * len(outputs), outputs).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    task = get_task(resolve_task(a.data))
    split = load_split(a.data, a.split, task.name).limit(a.limit)
    train = load_split(a.data, "train", task.name)
    common = {w for w, _ in Counter(w for g in train.golds.values() for w in words(g)).most_common(50)}
    others = swapped_profiles(split.questions)

    def outs(profile) -> list[str]:
        return [str(it.fields[task.pair_output]) for it in profile]

    def measures(q, gold: str, profile) -> dict[str, float]:
        nearest = nearest_item_output(task, replace(q, profile=profile))
        return {"coverage": coverage(gold, outs(profile), set()),
                "content coverage": coverage(gold, outs(profile), common),
                "novel coverage": coverage(gold, outs(profile), common | set(words(q.input))),
                "best item R-1": best_item(gold, outs(profile)),
                "nearest item R-1": float(per_question("generation", [gold], [nearest])[0])}

    table: dict[str, tuple[list[float], list[float]]] = {}
    for q, other in zip(split.questions, others, strict=True):
        gold = split.golds[q.id]
        mine, theirs = measures(q, gold, q.profile), measures(q, gold, other)
        for name in mine:
            own, swapped = table.setdefault(name, ([], []))
            own.append(mine[name])
            swapped.append(theirs[name])

    result = {"data": a.data, "split": a.split, "questions": len(split.questions), "rows": {}}
    print(f"{task.name} {a.split}, {len(split.questions)} questions: own history vs another user's (paired)")
    print("| measure | own | another user's | own - other, 95% interval |\n|---|---|---|---|")
    for name, (own, swapped) in table.items():
        x, y = np.asarray(own), np.asarray(swapped)
        keep = ~(np.isnan(x) | np.isnan(y))
        diff = paired_bootstrap(x[keep], y[keep])
        result["rows"][name] = {"own": float(x[keep].mean()), "other": float(y[keep].mean()), **diff}
        print(f"| {name} | {x[keep].mean():.3f} | {y[keep].mean():.3f} | {interval_text(diff)} |")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
