"""Compare two prediction files on the same questions: main metric of each and the paired-bootstrap interval.

For rows of different benches (e.g. a dev try against the run it changes): the questions both files predict,
scored with the task's main metric (`pplug.metrics.per_question`), gain A - B with its 95% interval
(`pplug.bench.significance.paired_bootstrap`, the bench's own verdict intervals).

Usage: python scripts/paired.py --data DIR --split dev PREDS_A.json PREDS_B.json [--relative]
"""

from __future__ import annotations

import argparse
import json

from pplug.bench.significance import interval_text, paired_bootstrap
from pplug.data import load_split, resolve_task
from pplug.metrics import MAIN_METRIC, per_question
from pplug.tasks import get_task


def outputs(path: str) -> dict[str, str]:
    golds = json.loads(open(path, encoding="utf-8").read())["golds"]
    return {str(g["id"]): str(g["output"]) for g in golds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--relative", action="store_true", help="the gain as a share of A's score (a swap drop)")
    args = ap.parse_args()
    task = get_task(resolve_task(args.data))
    split = load_split(args.data, args.split, task.name)
    a, b = outputs(args.a), outputs(args.b)
    ids = [q.id for q in split.questions if q.id in a and q.id in b]
    if not ids:
        raise SystemExit(f"error: {args.a} and {args.b} share no question of {args.data} {args.split}")
    golds = [split.golds[i] for i in ids]
    labels = list(task.labels) if task.labels else None
    sa = per_question(task.kind, golds, [a[i] for i in ids], labels)
    sb = per_question(task.kind, golds, [b[i] for i in ids], labels)
    diff = paired_bootstrap(sa, sb, relative=args.relative)
    metric = MAIN_METRIC[task.kind]
    gain = (f"A - B = {diff['difference']:+.1%} of A, {interval_text(diff, relative=True)}" if args.relative
            else interval_text(diff))
    print(f"{task.name} {args.split}, {len(ids)} shared questions, {metric}: A {sa.mean():.3f}, B {sb.mean():.3f}; "
          f"{gain}")


if __name__ == "__main__":
    main()
