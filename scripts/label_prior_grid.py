"""The label prior (alpha) x label shift (gamma) grid of a trained label-task run, on dev and on test.

One LLM-alone prediction pass per split (rank decoding: each prediction carries its label log-probs), then every
(alpha, gamma) of `pplug.label_prior.GRID` x `SHIFT_GRID` offline; the LLM's label marginal (gamma's m(y)) is
estimated on dev only. Prints both tables, the setting dev chooses (the one `decode.label_prior=auto` +
`decode.label_shift=auto` would pick) and its test score, with accuracy and macro-F1, and writes them as JSON.
Test is read, never used to choose: the test columns show how far the dev choice carries.

Usage: python scripts/label_prior_grid.py --run RUN --data DIR [--dev-limit N] [--out grid.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import torch

from pplug.data import load_split
from pplug.label_prior import GRID, PRIOR_ALONE, SHIFT_GRID, choose_labels, label_marginal
from pplug.metrics import MAIN_METRIC
from pplug.runner import load_run
from pplug.scoring import score_predictions
from pplug.tasks import get_task


def grid_scores(task, split, rows, marginal, smoothing, weights, shifts) -> dict[tuple[float, float], dict]:
    """{(alpha, gamma): metrics} for one split from its LLM-alone label log-probs."""
    profiles = [q.profile for q in split.questions]
    return {(w, g): score_predictions(task, split.golds, choose_labels(split.questions, rows, task, profiles, w,
                                                                       smoothing, g, marginal))
            for w in weights for g in shifts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dev-limit", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config, method = load_run(args.run, overrides=["decode.label_prior=0", "decode.label_shift=0",
                                                   "decode.classify=rank"])
    task = get_task(config.task)
    metric = MAIN_METRIC[task.kind]
    splits = {"dev": load_split(args.data, "dev", task.name).limit(args.dev_limit),
              "test": load_split(args.data, "test", task.name)}
    rows = {name: [p.label_scores for p in method.predict(s.questions)] for name, s in splits.items()}
    marginal = label_marginal(rows["dev"])
    weights = (*GRID, PRIOR_ALONE)
    tables = {name: grid_scores(task, s, rows[name], marginal, config.decode.prior_smoothing, weights, SHIFT_GRID)
              for name, s in splits.items()}
    candidates = [(w, g) for w in GRID for g in SHIFT_GRID]
    chosen = max(candidates, key=lambda wg: (tables["dev"][wg][metric], -wg[1], -wg[0]))
    prior_only = max(GRID, key=lambda w: (tables["dev"][w, 0.0][metric], -w))
    print(f"{args.run}: {metric} (macro-F1) per alpha (rows) x gamma (columns); alpha {PRIOR_ALONE:g} = prior alone")
    for name in splits:
        print(f"\n{name} ({len(splits[name].questions)} questions)")
        print("alpha  " + "  ".join(f"gamma={g:<11}" for g in SHIFT_GRID))
        for w in weights:
            cells = [tables[name][w, g] for g in SHIFT_GRID]
            print(f"{w:<6g} " + "  ".join(f"{c[metric]:.3f} ({c.get('f1', float('nan')):.3f})  " for c in cells))
    picks = {"chosen on dev (alpha, gamma)": chosen, "chosen on dev, gamma=0 (today's auto)": (prior_only, 0.0),
             "LLM alone": (0.0, 0.0), "prior alone": (PRIOR_ALONE, 0.0)}
    print()
    for label, wg in picks.items():
        dev, test = tables["dev"][wg], tables["test"][wg]
        print(f"{label:<40} alpha={wg[0]:g} gamma={wg[1]:g}: dev {dev[metric]:.3f} / test {test[metric]:.3f} "
              f"(F1 {test.get('f1', float('nan')):.3f})")
    if args.out:
        payload = {name: {f"{w:g},{g:g}": m for (w, g), m in t.items()} for name, t in tables.items()}
        payload["picks"] = {label: {"alpha": wg[0], "gamma": wg[1], "dev": tables["dev"][wg],
                                    "test": tables["test"][wg]} for label, wg in picks.items()}
        payload["label_marginal"] = marginal
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()
