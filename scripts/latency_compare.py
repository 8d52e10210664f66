"""Batch-1 latency of several trained runs, measured interleaved in one process (same load, same cache).

The bench measures each method's latency in its own process; when other jobs share the machine the
absolute seconds drift between rows. This script loads every run once, warms each up, then times the
same questions round-robin, so the ratios between methods are fair.

Usage:
    python scripts/latency_compare.py --data DIR --runs RUN_A RUN_B ... [--questions 16] [--threads 1]
        [--out latency.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pplug.bench.worker import latency_summary
from pplug.data import load_split
from pplug.resources import Resources
from pplug.runner import load_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    resources = Resources()
    methods = {}
    for run in a.runs:
        config, method = load_run(run, resources)
        methods[run] = method
    questions = load_split(a.data, a.split, config.task).questions[: a.questions]
    for method in methods.values():  # warm-up: embedding cache, allocator, first-call overheads
        method.predict(questions[:1])
    times: dict[str, list[float]] = {run: [] for run in methods}
    for q in questions:
        for run, method in methods.items():
            t0 = time.perf_counter()
            method.predict([q])
            times[run].append(time.perf_counter() - t0)
    rows = {}
    for run, ts in times.items():
        stats = latency_summary(ts)
        rows[run] = {"mean": stats["latency_mean"], "p95": stats["latency_p95"]}
    first = a.runs[0]
    for run, r in rows.items():
        r["ratio_to_first"] = r["mean"] / rows[first]["mean"]
        print(f"{run}: mean {r['mean']:.3f} s, p95 {r['p95']:.3f} s, {r['ratio_to_first']:.2f}x {Path(first).name}")
    result = {"data": a.data, "split": a.split, "questions": len(questions), "threads": a.threads, "runs": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
