"""The vocabulary prior's weight (``decode.vocab_prior``) swept on one split of a trained generation run, with the
users' own histories and with another user's (the `swap_history` pairing), on the same questions.

One generation pass per weight and pairing. A run trained before the prior existed has no background file; it is
then counted from the data folder's train split, as training would (`pplug.vocab_prior.VocabBackground`), and not
written into the run. Prints ROUGE per weight, own vs swapped and the relative drop, and writes the prediction
files (``{split}_w{weight}_{own,swap}.json``, for `scripts/paired.py`) to ``--out`` when given. Read-only on the run.

Usage: python scripts/vocab_prior_grid.py RUN --data DIR --split dev [--limit 48] [--weights 0,0.125,0.25,0.5]
       [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pplug.data import load_split, write_predictions
from pplug.metrics import MAIN_METRIC
from pplug.runner import load_run
from pplug.scoring import score_predictions
from pplug.tasks import get_task
from pplug.vocab_prior import GRID, fill_missing_background


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--weights", default=",".join(str(w) for w in GRID))
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config, method = load_run(args.run, overrides=["decode.vocab_prior=0"])
    task = get_task(config.task)
    if task.kind != "generation":
        raise SystemExit(f"error: {args.run}: task {task.name} is {task.kind}; the vocabulary prior is for generation")
    if fill_missing_background(method, task, lambda: load_split(args.data, "train", task.name).questions,
                               config.backbone.name_or_path):
        print(f"{args.run}: no background file; counted from {args.data} train ({method.vocab.n_docs} items)")
    split = load_split(args.data, args.split, task.name).limit(args.limit)
    metric = MAIN_METRIC[task.kind]
    weights = [float(w) for w in args.weights.split(",")]
    rows = {}
    for w in weights:
        for swap in (False, True):
            config.decode.vocab_prior, config.decode.swap_history = w, swap
            preds = method.predict(split.questions)
            rows[w, swap] = score_predictions(task, split.golds, {p.id: p.output for p in preds})
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                write_predictions(Path(args.out) / f"{args.split}_w{w:g}_{'swap' if swap else 'own'}.json",
                                  task.lamp_field, [{"id": p.id, "output": p.output} for p in preds])
    print(f"\n{args.run} on {args.split} ({len(split)} questions): {metric}")
    print("weight  own    another user's  drop")
    for w in weights:
        own, other = rows[w, False][metric], rows[w, True][metric]
        print(f"{w:<7g} {own:.3f}  {other:.3f}           {100 * (own - other) / own if own else 0:.1f}%")
    if args.out:
        payload = {f"{w:g},{'swap' if s else 'own'}": m for (w, s), m in rows.items()}
        (Path(args.out) / f"{args.split}_grid.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
