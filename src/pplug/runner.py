"""Train / predict / evaluate a run folder: what the CLI commands and the benchmark call.

A run folder holds ``config.json`` (the resolved RunConfig), ``task.json`` (the task definition), the
method's trainable weights only (never the backbone), ``train_report.json``, ``eval_{split}.json`` and
``preds_{split}.json``; resume state (``checkpoint/``) is deleted when training finishes unless
``keep_checkpoint`` (see ``pplug.runfiles``).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from pplug import distributed
from pplug.config import RunConfig, apply_override, validate
from pplug.data import Split, available_splits, load_split, resolve_task, write_predictions
from pplug.devices import check_run
from pplug.errors import PPlugError
from pplug.kind_defaults import resolve_per_kind
from pplug.label_prior import resolve_auto
from pplug.methods import Prediction, build_method
from pplug.resources import Resources
from pplug.runfiles import missing_weights, normalize_modes
from pplug.scoring import score_predictions
from pplug.task_file import TASK_FILE, load_task_file, write_task_file
from pplug.tasks import define_task, get_task, has_task, is_defined_by_data
from pplug.vocab_prior import fill_missing_background
from pplug.vocab_prior import resolve_auto as resolve_vocab


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_run(config: RunConfig, run_dir: str | Path, resources: Resources | None = None,
              resume: bool = False, keep_checkpoint: bool = False) -> dict[str, Any]:
    """Fit ``config.method`` on ``config.data`` (train split; selects on dev when present).

    With ``train.processes`` = N > 1 outside a launcher, N worker processes are spawned and train together
    (see `pplug.distributed`); under torchrun / accelerate this process is one rank of the launched group.
    Only rank 0 writes the run folder.

    Args:
        resume: continue from ``run_dir/checkpoint/`` (the end of the last finished epoch) when it exists;
            otherwise an old checkpoint there is discarded and training starts fresh.
        keep_checkpoint: keep ``run_dir/checkpoint/`` (optimizer + resume state) after training finishes.

    Raises:
        PPlugError: the data has no train split or no gold outputs for it, or more processes than training
            questions (checked before models load).
    """
    run_dir = Path(run_dir)
    check_run(config)  # the device exists and supports the dtypes: fail before writing the run folder
    config.task = resolve_task(config.data, config.task or None)
    train = load_split(config.data, "train", config.task)
    if train.golds is None:
        raise PPlugError(f"{config.data}: the train split has no gold outputs (train_outputs.json) to train on")
    dev = load_split(config.data, "dev", config.task) if "dev" in available_splits(config.data) else None
    launched = distributed.launched()
    if launched.size > 1 and config.train.processes == 1:  # the launcher decides; the saved config records it
        config.train.processes = launched.size
        validate(config)  # e.g. a training-free method refused
    processes, n_train = config.train.processes, len(train.limit(config.train.limit).questions)
    if processes > max(1, n_train):
        raise PPlugError(f"--processes {processes}: more processes than training questions ({n_train})")
    if processes > 1 and launched.size == 1:
        distributed.launch(processes, _train_worker, config, run_dir, resume, keep_checkpoint)
        return json.loads((run_dir / "train_report.json").read_text())
    with distributed.session(processes) as world:
        return _fit(config, run_dir, train, dev, resources, resume, keep_checkpoint, world)


def _train_worker(config: RunConfig, run_dir: Path, resume: bool, keep_checkpoint: bool) -> None:
    """One of ``pplug train --processes N``'s spawned processes (it loads its own models)."""
    train_run(config, run_dir, None, resume, keep_checkpoint)


def _fit(config: RunConfig, run_dir: Path, train: Split, dev: Split | None, resources: Resources | None,
         resume: bool, keep_checkpoint: bool, world: distributed.World) -> dict[str, Any]:
    filled = resolve_per_kind(config)  # saved below: config.json always holds concrete values
    if world.main:
        if not resume and (run_dir / "checkpoint").is_dir():
            shutil.rmtree(run_dir / "checkpoint")
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")
        write_task_file(run_dir / TASK_FILE, get_task(config.task))  # the run carries its task definition
    distributed.barrier(world)  # the other ranks start on a ready folder with no stale checkpoint
    t0 = time.perf_counter()
    method = build_method(config, resources)
    load_s = time.perf_counter() - t0
    report = method.fit(train, dev, run_dir)
    report.update(method=config.method, task=config.task, per_kind_defaults=filled, load_seconds=round(load_s, 2),
                  total_seconds=round(time.perf_counter() - t0, 2), peak_rss_mb=round(peak_rss_mb(), 1))
    if world.size > 1:
        report.update(processes=world.size, global_batch=config.train.batch_size * config.train.grad_accum
                      * world.size)
    if not world.main:
        return report
    config.save(run_dir / "config.json")  # fit may resolve settings chosen on dev (decode.label_prior="auto")
    (run_dir / "train_report.json").write_text(json.dumps(report, indent=1))
    if not keep_checkpoint and (run_dir / "checkpoint").is_dir():
        shutil.rmtree(run_dir / "checkpoint")  # a finished run keeps no resume state
    normalize_modes(run_dir)
    return report


RUNTIME_SECTIONS = ("decode", "retrieval")  # settings that may change after training (eval/predict --set)
RUNTIME_FIELDS = ("device", "backbone.dtype", "encoder.dtype", "plug.dtype")  # and where/how precisely it runs


def runtime_config(run_dir: str | Path, swap_history: bool = False, overrides: list[str] | None = None) -> RunConfig:
    """A run's saved config with prediction-time overrides; checks the weights exist (before any model loads).

    Raises:
        PPlugError: no config, no weights, or an override outside ``decode.*`` / ``retrieval.*`` and
            `RUNTIME_FIELDS` (device and dtypes: a run trained on a GPU predicts on a laptop with ``device=cpu``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PPlugError(f"{run_dir}: run folder not found")
    config = RunConfig.load(run_dir / "config.json")
    if (run_dir / TASK_FILE).is_file() and (not has_task(config.task) or is_defined_by_data(config.task)):
        define_task(load_task_file(run_dir / TASK_FILE))  # a task from a task file or inferred from data
    missing = missing_weights(config.method, run_dir)
    if missing is not None:
        raise PPlugError(f"{missing}: weights not found; this run folder is incomplete (train it with "
                         f"`pplug train --method {config.method} --out {run_dir}`)")
    for o in overrides or []:
        name = o.split("=", 1)[0].strip()
        section = name.split(".")[0]
        if section not in RUNTIME_SECTIONS and name not in RUNTIME_FIELDS:
            allowed = "/".join([*(s + ".*" for s in RUNTIME_SECTIONS), *RUNTIME_FIELDS])
            raise PPlugError(f"--set {o}: only {allowed} settings can change after training; retrain to change "
                             f"'{section}'")
        apply_override(config, o)
    validate(config)  # a bad override is a one-line ConfigError naming the field
    check_run(config)  # e.g. a run trained on a GPU, predicted here: "--device cpu"
    config.decode.swap_history = swap_history or config.decode.swap_history
    return config


def load_run(run_dir: str | Path, resources: Resources | None = None, swap_history: bool = False,
             overrides: list[str] | None = None):
    """Rebuild a trained method from its run folder; returns ``(config, method)``.

    Args:
        overrides: ``section.field=value`` for ``decode``/``retrieval`` settings (e.g. ``decode.num_beams=4``).
    """
    config = runtime_config(run_dir, swap_history, overrides)
    method = build_method(config, resources)
    method.load(Path(run_dir))
    return config, method


def predict_run(run_dir: str | Path, data_dir: str | Path, split: str = "test", limit: int | None = None,
                swap_history: bool = False, resources: Resources | None = None,
                out: str | Path | None = None, overrides: list[str] | None = None,
                ) -> tuple[list[Prediction], dict[str, Any], Split]:
    """Predict a split with a trained run; writes LaMP predictions to ``out`` when given."""
    config = runtime_config(run_dir, swap_history, overrides)
    data = load_split(data_dir, split, config.task).limit(limit)
    config, method = load_run(run_dir, resources, swap_history, overrides)
    # `--set decode.label_prior=auto` / `label_shift=auto` / `vocab_prior=auto`: re-chosen on this data's dev split
    task, splits = get_task(config.task), available_splits(data_dir)
    autos = (config.decode.label_prior, config.decode.label_shift, config.decode.vocab_prior)
    dev = load_split(data_dir, "dev", config.task) if "auto" in autos and "dev" in splits else None
    tuning = resolve_auto(config, task, dev, method.predict)
    if config.decode.vocab_prior and "train" in splits:  # a run trained before the prior existed: count the
        fill_missing_background(method, task, lambda: load_split(data_dir, "train", config.task).questions,
                                config.backbone.name_or_path)  # background from this data's train split
    vocab_tuning = resolve_vocab(config, task, dev, method.predict)
    t0 = time.perf_counter()
    preds = method.predict(data.questions)  # methods show a progress bar over their batches
    seconds = time.perf_counter() - t0
    normalize_modes(run_dir)  # OPPU writes per-user adapters while predicting
    if out is not None:
        write_predictions(out, task.lamp_field, [{"id": p.id, "output": p.output} for p in preds])
    timing = {"questions": len(preds), "predict_seconds": round(seconds, 2),
              "seconds_per_question": round(seconds / max(1, len(preds)), 4),
              "mean_prompt_tokens": round(sum(p.prompt_tokens for p in preds) / max(1, len(preds)), 1),
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    if tuning is not None:
        timing["label_prior_tuning"] = tuning
    if vocab_tuning is not None:
        timing["vocab_prior_tuning"] = vocab_tuning
    return preds, timing, data


def eval_run(run_dir: str | Path, data_dir: str | Path, split: str = "test", limit: int | None = None,
             swap_history: bool = False, resources: Resources | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Predict + score; writes ``eval_{split}[_swap].json`` and the predictions into the run folder.

    Raises:
        PPlugError: the split has no gold outputs (checked before any model loads; use ``predict``).
    """
    run_dir = Path(run_dir)
    config = runtime_config(run_dir, swap_history, overrides)
    if load_split(data_dir, split, config.task).golds is None:
        raise PPlugError(f"{data_dir}: split '{split}' has no gold outputs ({split}_outputs.json) to score "
                         f"against; use `pplug predict` for unlabeled questions")
    suffix = "_swap" if swap_history else ""
    preds, info, data = predict_run(run_dir, data_dir, split, limit, swap_history, resources,
                                    out=run_dir / f"preds_{split}{suffix}.json", overrides=overrides)
    task = get_task(data.task)
    metrics = score_predictions(task, data.golds, {p.id: p.output for p in preds})
    report = {"task": task.name, "split": split, "swap_history": swap_history, "metrics": metrics} | info
    if overrides:
        report["overrides"] = list(overrides)
    (run_dir / f"eval_{split}{suffix}.json").write_text(json.dumps(report, indent=1))
    return report
