"""Diagnostic: a run's last-epoch weights (its kept ``checkpoint/last.pt``) on a split, with the users' own and
with another user's history (the `swap_history` pairing).

A run keeps its best dev epoch in ``model.safetensors``; the bench also keeps the last epoch's training state. This
scores that state, to ask whether an effect seen at the last epoch on one split shows on another. It never chooses
anything and never changes the run folder. Writes the two prediction files (for `scripts/paired.py`) to ``--out``.

Usage: python scripts/last_epoch.py RUN --data DIR --split test [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from pplug.data import load_split, write_predictions
from pplug.runner import load_run
from pplug.scoring import score_predictions
from pplug.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=None, help="folder for last_{split}_{own,swap}.json (default: none written)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = Path(args.run) / "checkpoint" / "last.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"error: {checkpoint}: no kept training state (bench runs keep it; `pplug train` needs "
                         f"--keep-checkpoint)")
    config, method = load_run(args.run)
    method.trainable.load_state_dict(torch.load(checkpoint, weights_only=True)["trainable"])
    split = load_split(args.data, args.split, config.task)
    task = get_task(config.task)
    scores = {}
    for name, swap in (("own", False), ("swap", True)):
        method.config.decode = replace(method.config.decode, swap_history=swap)
        preds = method.predict(split.questions)
        scores[name] = score_predictions(task, split.golds, {p.id: p.output for p in preds})
        if args.out:
            write_predictions(Path(args.out) / f"last_{args.split}_{name}.json", task.lamp_field,
                              [{"id": p.id, "output": p.output} for p in preds])
    print(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
