"""``pplug bench``: every method side by side on one data folder, quality and cost in one table.

Each method runs in its own subprocess (``python -m pplug.bench.worker``): a failure is reported and
the others still finish, and peak memory is measured per method. Each worker's output is streamed live
and kept in ``OUT/logs/<method>.log``. The parent adds the non-LLM heuristic rows and writes
``results.json``, ``results.md`` and ``results.png`` (``pplug.bench.report``).
"""

from __future__ import annotations

import codecs
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pplug.bench.report import preds_path, spec_dir, write_results
from pplug.data import load_split, resolve_task
from pplug.data.lamp import write_predictions
from pplug.errors import PPlugError
from pplug.heuristics import heuristic_predictions
from pplug.scoring import score_predictions
from pplug.tasks import get_task


@dataclass
class BenchConfig:
    data: str  # the task folder (train/dev/test)
    methods: list[str]  # method specs: name[:variant][@section.field=value,...]
    out: str  # output folder
    limit: int | None = None  # evaluate on the first N questions of `split`
    split: str = "test"  # evaluation split; "dev" is for tuning sweeps (then epoch selection is off: last epoch)
    train_limit: int | None = None  # train on the first N train questions
    dev_limit: int | None = None  # select on the first N dev questions
    users: int | None = None  # OPPU: personalize only the first N test users
    latency_questions: int = 16  # single-question requests timed for mean/p95 latency
    overrides: list[str] = field(default_factory=list)  # --set section.field=value for every method
    timeout: int = 3 * 3600  # seconds per method before it is reported as failed
    threads: int | None = None  # torch threads per method process (1 = stable timings beside other jobs)
    fresh: bool = False  # rerun methods that already have a result in OUT (default: reuse them)


LONG_METHODS = ("task-lora", "task-lora-rag", "oppu", "oppu-rag")  # fine-tune the backbone: hours on CPU


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every method (each in a subprocess, streamed and logged), add heuristics, write the result files.

    Returns:
        the ``results.json`` object; rows of failed methods have ``status: failed`` and the log's tail.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(resolve_task(cfg.data))
    if cfg.split not in ("test", "dev"):
        raise PPlugError(f"bench --split must be 'test' or 'dev', got {cfg.split!r}")
    if cfg.split == "dev" and "train.select_on_dev=false" not in cfg.overrides:
        cfg.overrides = [*cfg.overrides, "train.select_on_dev=false"]  # never select on the split we report
        say("--split dev: epoch selection on dev is off (each method keeps its last epoch)")
    check_specs(cfg)
    long = [m for m in cfg.methods if m.split(":")[0].split("@")[0] in LONG_METHODS]
    if long and cfg.train_limit is None:
        say(f"note: {', '.join(long)} fine-tune the backbone (OPPU also one adapter per test user): hours on a CPU "
            f"with full data; bound them with --train-limit/--users or leave them out of --methods")
    evaluated = load_split(cfg.data, cfg.split, task.name).limit(cfg.limit)  # the questions every row is scored on
    heuristics = heuristic_rows(cfg, task, evaluated)  # once: for generation it loads the encoder, encodes the split
    golds = evaluated.golds  # the verdicts' paired intervals are computed on these
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, spec in enumerate(cfg.methods, 1):
        say(f"[{i}/{len(cfg.methods)}] {spec} (bench running {_clock(time.perf_counter() - started)})")
        run_dir = out / "runs" / spec_dir(spec)
        result_file = run_dir / "bench_result.json"
        key = row_key(cfg, spec, task.name)
        if result_file.is_file() and not cfg.fresh:
            saved = json.loads(result_file.read_text())
            changed = key_changes(saved.get("bench_key"), key)
            if not changed:
                say(f"{spec}: reusing {result_file} (--fresh to rerun)")
                rows.append(saved)
                continue
            say(f"{spec}: its result in {result_file} was made with other bench settings ({changed}): running it "
                f"again (a finished training with the same settings is only evaluated again)")
        cmd = [sys.executable, "-m", "pplug.bench.worker", "--spec", spec, "--data", cfg.data, "--run", str(run_dir),
               "--bench-config", json.dumps(asdict(cfg))]
        log = out / "logs" / f"{spec_dir(spec)}.log"
        t0 = time.perf_counter()
        code = stream(cmd, log, cfg.timeout)
        if code == 0 and result_file.is_file():
            row = {**json.loads(result_file.read_text()), "bench_key": key}
            result_file.write_text(json.dumps(row, indent=1))
        else:
            tail = log_tail(log)
            reason = f"timed out after {cfg.timeout} s" if code is None else (tail[-1] if tail else "unknown error")
            row = {"method": spec, "status": "failed", "error": reason, "error_tail": tail, "log": str(log)}
            say(f"{spec} FAILED (exit {code}); last lines of {log}:\n    " + "\n    ".join(tail or [reason]))
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        write_results(out, task, cfg, rows + heuristics, golds)
    return write_results(out, task, cfg, rows + heuristics, golds)


def row_key(cfg: BenchConfig, spec: str, task: str | None = None) -> dict[str, Any]:
    """What a method's row depends on besides its run folder: a saved row is reused only when this is unchanged.

    With ``task``, the key also holds the method's resolved settings (``settings``: every config field after the
    spec, ``--set`` and the task kind's defaults): a row made when a default was different runs again.
    """
    key = {"spec": spec, "data": str(Path(cfg.data).resolve()), "split": cfg.split, "limit": cfg.limit,
           "train_limit": cfg.train_limit, "dev_limit": cfg.dev_limit, "users": cfg.users,
           "overrides": list(cfg.overrides), "latency_questions": cfg.latency_questions}
    if task is not None:
        key["settings"] = resolved_settings(cfg, spec, task)
    return key


def resolved_settings(cfg: BenchConfig, spec: str, task: str) -> dict[str, Any]:
    """{"section.field": value} of the RunConfig a method's row starts from (JSON-normalised, so it compares equal
    to a saved key)."""
    from pplug.config import config_from_spec
    from pplug.kind_defaults import resolve_per_kind

    run_cfg = config_from_spec(spec, cfg.data, cfg.overrides)
    run_cfg.task = run_cfg.task or task
    resolve_per_kind(run_cfg)
    return json.loads(json.dumps(run_cfg.to_flat()))


def key_changes(saved: dict[str, Any] | None, key: dict[str, Any]) -> str:
    """'' when a saved row's key equals ``key``; otherwise what changed, for the log line."""
    if saved is None:
        return "no record of the settings it ran with"
    changed = []
    for k, v in key.items():
        old = saved.get(k)
        if old == v:
            continue
        if isinstance(v, dict) and isinstance(old, dict):  # the resolved settings: name the fields
            fields = sorted(f for f in old.keys() | v.keys() if old.get(f) != v.get(f))
            more = f" and {len(fields) - 3} more" if len(fields) > 3 else ""
            changed.append("settings " + ", ".join(f"{f}: {old.get(f)} -> {v.get(f)}" for f in fields[:3]) + more)
        elif isinstance(v, dict):
            changed.append(f"{k}: not recorded")
        else:
            changed.append(f"{k}: {old} -> {v}")
    return "; ".join(changed)


def check_specs(cfg: BenchConfig) -> None:
    """Refuse unknown methods and bad config fields of any spec before anything runs (one line, exit 2)."""
    from pplug.config import config_from_spec
    from pplug.methods import method_builder

    for spec in cfg.methods:
        try:
            method_builder(config_from_spec(spec, cfg.data, cfg.overrides).method)
        except (ValueError, TypeError) as e:
            raise PPlugError(f"--methods {spec}: {e}") from e


def say(message: str) -> None:
    """A bench status line on stderr (stdout carries only the final table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def stream(cmd: list[str], log: Path, timeout: float) -> int | None:
    """Run ``cmd``, copying its stdout+stderr live to our stderr and to ``log``; its exit code (None: timed out)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        with log.open("w", encoding="utf-8") as f:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(8192):
                text = decode.decode(chunk)
                f.write(text)
                f.flush()
                sys.stderr.write(text)
                sys.stderr.flush()
        proc.wait()
    finally:
        timed_out = not timer.is_alive() and proc.returncode != 0
        timer.cancel()
    return None if timed_out else proc.returncode


def log_tail(log: Path, lines: int = 15) -> list[str]:
    """The last non-empty lines of a log (progress-bar redraws collapsed to their last state)."""
    if not log.is_file():
        return []
    text = log.read_text(errors="replace")
    kept = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.split("\n")]  # not splitlines: it splits at \r
    return [ln for ln in kept if ln.strip()][-lines:]


def heuristic_rows(cfg: BenchConfig, task, test) -> list[dict[str, Any]]:
    """Non-LLM reference rows on the evaluation questions ``test`` (generation: nearest item by encoder cosine);
    their predictions are written where `preds_path` looks for them."""
    train = load_split(cfg.data, "train", task.name)
    encode = None
    if task.kind == "generation":
        from pplug.config import config_from_spec
        from pplug.devices import resolve_device
        from pplug.resources import Resources

        run_cfg = config_from_spec("zero-shot", cfg.data, cfg.overrides)
        # the history encoder behind the on-disk embedding cache, as PPlug's: what is encoded here once (all
        # texts in one length-sorted pass, less padding than question by question) PPlug's run then reads back
        enc = Resources().encoder(run_cfg.encoder, resolve_device(run_cfg.device))
        enc.encode([task.render_item(it) for q in test.questions for it in q.profile]
                   + [task.query(q.input) for q in test.questions], show_progress=True)
        encode = lambda texts: enc.encode(texts).numpy()  # noqa: E731
    rows = []
    for name, preds in heuristic_predictions(task, train, test, encode).items():
        method = f"heuristic:{name}"
        write_predictions(preds_path(Path(cfg.out), method, cfg.split), task.lamp_field,
                          [{"id": i, "output": o} for i, o in preds.items()])
        rows.append({"method": method, "status": "ok", "test_questions": len(test),
                     "metrics": score_predictions(task, test.golds, preds)})
        if task.kind == "classification":
            rows[-1]["labels_used"] = len(set(preds.values()))
    return rows
