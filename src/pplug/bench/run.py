"""``pplug bench``: every method side by side on one data folder, quality and cost in one table.

Each method runs in its own subprocess (``python -m pplug.bench.worker``): a failure is reported and
the others still finish, and peak memory is measured per method. The parent adds the non-LLM
heuristic rows and writes ``results.json``, ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pplug.bench.targets import check_targets, targets_markdown
from pplug.data import load_split, resolve_task
from pplug.heuristics import heuristic_predictions
from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC
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


def spec_dir(spec: str) -> str:
    """A folder name for a method spec."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def plain_spec_dir(spec: str) -> str:
    """The folder of the plain run a diagnostic row reuses: ``pplug:swap_history`` -> ``pplug``."""
    return spec_dir(spec.split(":")[0].split("@")[0])


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every method (each in a subprocess), add heuristics, write the result files."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(resolve_task(cfg.data))
    if cfg.split not in ("test", "dev"):
        raise ValueError(f"bench split must be 'test' or 'dev', got {cfg.split!r}")
    if cfg.split == "dev" and "train.select_on_dev=false" not in cfg.overrides:
        cfg.overrides = [*cfg.overrides, "train.select_on_dev=false"]  # never select on the split we report
        print("[bench] --split dev: epoch selection on dev is off (each method keeps its last epoch)", flush=True)
    heuristics = heuristic_rows(cfg, task)  # once: for generation it loads the encoder and encodes the test set
    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(cfg.methods, 1):
        print(f"[bench {i}/{len(cfg.methods)}] {spec}", flush=True)
        run_dir = out / "runs" / spec_dir(spec)
        result_file = run_dir / "bench_result.json"
        if result_file.is_file() and not cfg.fresh:
            print(f"[bench] {spec}: reusing {result_file} (--fresh to rerun)", flush=True)
            rows.append(json.loads(result_file.read_text()))
            continue
        cmd = [sys.executable, "-m", "pplug.bench.worker", "--spec", spec, "--data", cfg.data, "--run", str(run_dir),
               "--bench-config", json.dumps(asdict(cfg))]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True, timeout=cfg.timeout)
            err = proc.stderr[-2000:] if proc.returncode else ""
        except subprocess.TimeoutExpired:
            proc, err = None, f"timed out after {cfg.timeout} s"
        if proc is not None and proc.returncode == 0 and result_file.is_file():
            row = json.loads(result_file.read_text())
        else:
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            row = {"method": spec, "status": "failed", "error": last[-1] if last else "unknown error"}
            print(f"[bench] {spec} FAILED: {row['error']}", flush=True)
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        _write(out, task, cfg, rows + heuristics)
    return _write(out, task, cfg, rows + heuristics)


def heuristic_rows(cfg: BenchConfig, task) -> list[dict[str, Any]]:
    """Non-LLM reference rows on the same evaluation questions (generation: nearest item by encoder cosine)."""
    train = load_split(cfg.data, "train", task.name)
    test = load_split(cfg.data, cfg.split, task.name).limit(cfg.limit)
    encode = None
    if task.kind == "generation":
        from pplug.encoders import load_encoder

        enc = load_encoder().freeze()
        encode = lambda texts: enc.encode(texts).numpy()  # noqa: E731
    rows = []
    for name, preds in heuristic_predictions(task, train, test, encode).items():
        rows.append({"method": f"heuristic:{name}", "status": "ok", "test_questions": len(test),
                     "metrics": score_predictions(task, test.golds, preds)})
        if task.kind == "classification":
            rows[-1]["labels_used"] = len(set(preds.values()))
    return rows


def interleaved_latency(out: Path) -> dict[str, float] | None:
    """{"pplug": s, "rag-bm25": s} from ``OUT/latency_compare.json`` (scripts/latency_compare.py), if present."""
    path = out / "latency_compare.json"
    if not path.is_file():
        return None
    runs = json.loads(path.read_text())["runs"]
    return {Path(run).name: r["mean"] for run, r in runs.items()}


def labels_used(out: Path, spec: str, split: str) -> int | None:
    """Classification: how many distinct labels a method predicted on the evaluation split (a collapse to
    the frequent labels shows here), read from the predictions file its run wrote; None if absent."""
    if ":swap_history" in spec:
        path = out / "runs" / plain_spec_dir(spec) / f"preds_{split}_swap.json"
    else:
        path = out / "runs" / spec_dir(spec) / f"preds_{split}.json"
    if not path.is_file():
        return None
    return len({g["output"] for g in json.loads(path.read_text())["golds"]})


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _write(out: Path, task, cfg: BenchConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if task.kind == "classification":
        for r in rows:
            if r.get("status") == "ok" and not r["method"].startswith("heuristic:"):
                r["labels_used"] = labels_used(out, r["method"], cfg.split)
    verdicts = check_targets(task.kind, rows, interleaved_latency(out))
    result = {"task": task.name, "data": cfg.data, "config": asdict(cfg), "rows": rows, "targets": verdicts}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    metrics = {"classification": ["accuracy", "f1"], "rating": ["mae", "rmse"],
               "generation": ["rouge-1", "rouge-L"]}[task.kind]
    spread = task.kind == "classification"
    head = ["method", *metrics, *(["labels used"] if spread else []), f"n {cfg.split}", "train s",
            "onboard s/user", "state/user", "latency mean s", "latency p95 s", "prompt tokens", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | FAILED: {r.get('error', '')[:80]} |" + " |" * (len(head) - 2))
            continue
        m, c = r.get("metrics", {}), r.get("cost", {})
        cells = [r["method"], *[_fmt(m.get(k)) for k in metrics], *([_fmt(r.get("labels_used"))] if spread else []),
                 _fmt(r.get("test_questions")),
                 _fmt(c.get("train_seconds"), 0), _fmt(c.get("onboard_seconds"), 4),
                 _human_bytes(c.get("state_bytes")), _fmt(c.get("latency_mean"), 2), _fmt(c.get("latency_p95"), 2),
                 _fmt(c.get("mean_prompt_tokens"), 0), _fmt(c.get("peak_rss_mb"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    text = f"Task `{task.name}` ({cfg.data}), {cfg.split} split\n\n" + "\n".join(lines) + "\n"
    text += "\nTargets (computed from the rows above):\n\n" + targets_markdown(verdicts) + "\n"
    (out / "results.md").write_text(text)
    _plot(out, task, rows, cfg.split)
    return result


def _plot(out: Path, task, rows: list[dict[str, Any]], split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = MAIN_METRIC[task.kind]
    ok = [r for r in rows if r.get("status") == "ok" and metric in r.get("metrics", {})]
    if not ok:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    names = [r["method"] for r in ok]
    vals = [r["metrics"][metric] for r in ok]
    colors = ["tab:green" if n.startswith("pplug") else "tab:gray" if n.startswith("heuristic") else "tab:blue"
              for n in names]
    ax1.barh(names, vals, color=colors)
    ax1.set_xlabel(f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)")
    ax1.set_title(f"{task.name}: {metric} on {split}")
    ax1.invert_yaxis()
    for r in ok:
        lat = r.get("cost", {}).get("latency_mean")
        if lat:
            ax2.scatter(lat, r["metrics"][metric])
            ax2.annotate(r["method"], (lat, r["metrics"][metric]), fontsize=8)
    ax2.set_xlabel("mean latency per question (s, batch 1)")
    ax2.set_ylabel(metric)
    ax2.set_title("cost vs quality")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)
