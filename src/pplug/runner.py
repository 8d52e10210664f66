"""Train / predict / evaluate a run folder: what the CLI commands and the benchmark call.

A run folder holds ``config.json`` (the resolved RunConfig), ``task.json`` (the task definition), the
method's trainable weights only (never the backbone), ``train_report.json`` and ``eval_{split}.json``.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from pplug.config import RunConfig
from pplug.data import Split, available_splits, load_split, resolve_task, write_predictions
from pplug.methods import Prediction, build_method
from pplug.resources import Resources
from pplug.scoring import score_predictions
from pplug.task_file import TASK_FILE, load_task_file, write_task_file
from pplug.tasks import define_task, get_task, has_task, is_defined_by_data


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_run(config: RunConfig, run_dir: str | Path, resources: Resources | None = None,
              resume: bool = False) -> dict[str, Any]:
    """Fit ``config.method`` on ``config.data`` (train split; selects on dev when present).

    Args:
        resume: continue from ``run_dir/checkpoint/`` (the end of the last finished epoch) when it exists;
            otherwise an old checkpoint there is discarded and training starts fresh.
    """
    run_dir = Path(run_dir)
    if not resume and (run_dir / "checkpoint").is_dir():
        shutil.rmtree(run_dir / "checkpoint")
    config.task = resolve_task(config.data, config.task or None)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    write_task_file(run_dir / TASK_FILE, get_task(config.task))  # the run carries its task definition
    train = load_split(config.data, "train", config.task)
    dev = load_split(config.data, "dev", config.task) if "dev" in available_splits(config.data) else None
    t0 = time.perf_counter()
    method = build_method(config, resources)
    load_s = time.perf_counter() - t0
    report = method.fit(train, dev, run_dir)
    report.update(method=config.method, task=config.task, load_seconds=round(load_s, 2),
                  total_seconds=round(time.perf_counter() - t0, 2), peak_rss_mb=round(peak_rss_mb(), 1))
    (run_dir / "train_report.json").write_text(json.dumps(report, indent=1))
    return report


def load_run(run_dir: str | Path, resources: Resources | None = None, swap_history: bool = False):
    """Rebuild a trained method from its run folder."""
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir / "config.json")
    if (run_dir / TASK_FILE).is_file() and (not has_task(config.task) or is_defined_by_data(config.task)):
        define_task(load_task_file(run_dir / TASK_FILE))  # a task from a task file or inferred from data
    config.decode.swap_history = swap_history or config.decode.swap_history
    method = build_method(config, resources)
    method.load(run_dir)
    return config, method


def predict_run(run_dir: str | Path, data_dir: str | Path, split: str = "test", limit: int | None = None,
                swap_history: bool = False, resources: Resources | None = None,
                out: str | Path | None = None) -> tuple[list[Prediction], dict[str, Any], Split]:
    """Predict a split with a trained run; writes LaMP predictions to ``out`` when given."""
    config, method = load_run(run_dir, resources, swap_history)
    data = load_split(data_dir, split, config.task).limit(limit)
    t0 = time.perf_counter()
    preds = method.predict(data.questions)
    seconds = time.perf_counter() - t0
    if out is not None:
        write_predictions(out, get_task(config.task).lamp_field, [{"id": p.id, "output": p.output} for p in preds])
    timing = {"questions": len(preds), "predict_seconds": round(seconds, 2),
              "seconds_per_question": round(seconds / max(1, len(preds)), 4),
              "mean_prompt_tokens": round(sum(p.prompt_tokens for p in preds) / max(1, len(preds)), 1),
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    return preds, timing, data


def eval_run(run_dir: str | Path, data_dir: str | Path, split: str = "test", limit: int | None = None,
             swap_history: bool = False, resources: Resources | None = None) -> dict[str, Any]:
    """Predict + score; writes ``eval_{split}[_swap].json`` and the predictions into the run folder."""
    run_dir = Path(run_dir)
    suffix = "_swap" if swap_history else ""
    preds, info, data = predict_run(run_dir, data_dir, split, limit, swap_history, resources,
                                    out=run_dir / f"preds_{split}{suffix}.json")
    if data.golds is None:
        return {"error": f"split '{split}' has no gold outputs to score against"} | info
    task = get_task(data.task)
    metrics = score_predictions(task, data.golds, {p.id: p.output for p in preds})
    report = {"task": task.name, "split": split, "swap_history": swap_history, "metrics": metrics} | info
    (run_dir / f"eval_{split}{suffix}.json").write_text(json.dumps(report, indent=1))
    return report
