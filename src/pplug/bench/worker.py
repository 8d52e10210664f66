"""One method of a benchmark, in its own process: train (select on dev), evaluate on test, measure cost.

OPPU's first stage is exactly ``task-lora`` (same data, LoRA and training settings): when the same bench
already trained ``task-lora`` with an identical configuration, its task adapter and checkpoint are copied
into the OPPU run instead of training them again (the train seconds carried over are the original ones).

A method's run folder is resumed from its kept checkpoint (a finished run is then only evaluated again, e.g. on
a larger ``--limit``) only when it was trained with the same settings; otherwise, and with ``--fresh``, it is
trained again from scratch (`resume_decision`).

Writes ``RUN/bench_result.json``. Called by ``pplug.bench.run``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pplug.bench.report import plain_spec_dir
from pplug.config import RunConfig, config_from_spec, flatten
from pplug.data import load_split, resolve_task
from pplug.errors import PPlugError
from pplug.kind_defaults import resolve_per_kind
from pplug.methods.lora import USERS_DIR
from pplug.resources import Resources
from pplug.runner import RUNTIME_FIELDS, RUNTIME_SECTIONS, eval_run, load_run, peak_rss_mb, train_run


def latency_summary(times: list[float]) -> dict[str, float | None]:
    """Mean and p95 (nearest rank) of request seconds; None for both when there are none."""
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))] if times else None
    return {"latency_mean": statistics.mean(times) if times else None, "latency_p95": p95}


def latency_probe(method, questions) -> dict[str, float | None]:
    """Single-question requests (batch 1): mean and p95 seconds."""
    times = []
    for q in questions:
        t0 = time.perf_counter()
        method.predict([q])
        times.append(time.perf_counter() - t0)
    return latency_summary(times)


SHARED_TASK_STAGE = {"oppu": "task-lora", "oppu-rag": "task-lora-rag"}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a saved run config that decide the task stage (not the method name or per-user settings)."""
    keep = {k: v for k, v in config.items() if k != "method"}
    keep["decode"] = {k: v for k, v in config.get("decode", {}).items()  # prior: chosen after the task stage
                      if k not in ("swap_history", "label_prior", "label_shift", "label_marginal", "vocab_prior")}
    keep["train"] = {k: v for k, v in config.get("train", {}).items() if k != "progress"}
    keep["lora"] = {k: v for k, v in config.get("lora", {}).items() if not k.startswith("user")}
    return keep


def share_task_stage(cfg, run_dir: Path) -> str | None:
    """Copy a finished, identically configured ``task-lora`` stage into an OPPU run; the source folder or None."""
    source_name = SHARED_TASK_STAGE.get(cfg.method)
    if source_name is None or (run_dir / "checkpoint").exists():
        return None
    for source in sorted(run_dir.parent.iterdir()):
        saved = source / "config.json"
        if source == run_dir or not saved.is_file() or not (source / "task_lora").is_dir():
            continue
        theirs = RunConfig.load(saved).to_dict()  # defaults filled in: fields added since then compare equal
        if theirs.get("method") != source_name or not (source / "checkpoint" / "task_lora.pt").is_file():
            continue
        if comparable(theirs) == comparable(cfg.to_dict()):
            shutil.copytree(source / "task_lora", run_dir / "task_lora", dirs_exist_ok=True)
            (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / "checkpoint" / "task_lora.pt", run_dir / "checkpoint" / "task_lora.pt")
            print(f"[bench] {cfg.method}: task stage reused from {source}", flush=True)
            return str(source)
    return None


def training_settings(config: dict[str, Any]) -> dict[str, str]:
    """A saved run config flattened to ``{"section.field": value}`` without what may change after training.

    Dropped: the runtime sections and fields (decoding, retrieval, device, dtypes: `pplug.runner`), the
    progress bar and OPPU's user count (adapters are onboarded lazily per user).
    """
    skip = {*RUNTIME_FIELDS, "train.progress", "lora.users"}
    return {key: json.dumps(v, sort_keys=True) for key, v in flatten(config).items()
            if key not in skip and key.split(".")[0] not in RUNTIME_SECTIONS}


def resume_decision(cfg: RunConfig, run_dir: Path, fresh: bool) -> tuple[bool, str | None]:
    """Whether to resume ``run_dir``'s kept training state, and the reason when not.

    A checkpoint left by a run with other training settings (another ``--set``, ``--train-limit``...) is never
    resumed: its weights would be reported under the new settings. ``--fresh`` always trains again.
    """
    if fresh:
        return False, "--fresh: training from scratch"
    saved = run_dir / "config.json"
    if not (run_dir / "checkpoint").is_dir() or not saved.is_file():
        return True, None
    theirs, ours = training_settings(RunConfig.load(saved).to_dict()), training_settings(cfg.to_dict())
    changed = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if changed:
        shown = ", ".join(f"{k}: {theirs.get(k, '-')} -> {ours.get(k, '-')}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        return False, f"the kept run was trained with other settings ({shown}{more}): training from scratch"
    return True, None


def run(spec: str, data: str, run_dir: Path, bench: dict[str, Any]) -> dict[str, Any]:
    if bench.get("threads"):
        import torch

        torch.set_num_threads(bench["threads"])
    cfg = config_from_spec(spec, data, bench.get("overrides"))
    cfg.train.limit = bench.get("train_limit") or cfg.train.limit
    cfg.train.dev_limit = bench.get("dev_limit") or cfg.train.dev_limit
    cfg.lora.users = bench.get("users") or cfg.lora.users
    swap = cfg.decode.swap_history
    cfg.decode.swap_history = False  # swap is a prediction-time diagnostic; train as usual
    resources = Resources()
    base = run_dir.parent / plain_spec_dir(spec)
    if swap and (base / "model.safetensors").is_file() and (base / "config.json").is_file():
        run_dir = base  # reuse the already trained plain run
        report = json.loads((base / "train_report.json").read_text())
        report["train_seconds"] = 0.0
    else:
        cfg.task = cfg.task or resolve_task(data)
        resolve_per_kind(cfg)  # before comparing with a saved task-lora config (which holds concrete values)
        resume, why_not = resume_decision(cfg, run_dir, bool(bench.get("fresh")))
        if not resume:  # the kept state (and OPPU's user adapters built on it) would mix with the new run
            print(f"[bench] {spec}: {why_not}", flush=True)
            for stale in ("checkpoint", USERS_DIR):
                shutil.rmtree(run_dir / stale, ignore_errors=True)
        shared = share_task_stage(cfg, run_dir)
        report = train_run(cfg, run_dir, resources, resume=True, keep_checkpoint=True)  # resume + OPPU sharing
        if shared:
            report["task_stage_from"] = shared
    limit, split = bench.get("limit"), bench.get("split", "test")
    ev = eval_run(run_dir, data, split, limit, swap_history=swap, resources=resources)
    _, method = load_run(run_dir, resources, swap_history=swap)
    test = load_split(data, split, cfg.task or None).limit(limit)
    lat = latency_probe(method, test.questions[: bench.get("latency_questions", 16)])
    onboard_s, state_bytes = None, None
    if hasattr(method, "onboard_cost"):
        onboard_s, state_bytes = method.onboard_cost(test.questions, run_dir)
    cost = {"train_seconds": report.get("train_seconds", 0.0), "onboard_seconds": onboard_s,
            "state_bytes": state_bytes, "mean_prompt_tokens": ev.get("mean_prompt_tokens"),
            "predict_seconds_per_question": ev.get("seconds_per_question"), "peak_rss_mb": round(peak_rss_mb(), 1),
            "trainable_parameters": report.get("trainable_parameters"), **lat}
    return {"method": spec, "status": "ok", "test_questions": ev.get("questions"), "metrics": ev.get("metrics"),
            "cost": cost, "train": {k: v for k, v in report.items() if k != "history"},
            "history": report.get("history")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--bench-config", required=True)
    a = ap.parse_args()
    from pplug.progress import enabled, set_quiet

    if not enabled():  # the bench ran with --quiet (PPLUG_QUIET=1): the model loaders' bars too
        set_quiet(True)
    run_dir = Path(a.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(a.spec, a.data, run_dir, json.loads(a.bench_config))
    except PPlugError as e:  # a user error: one clear last line in the log, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    (run_dir / "bench_result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
