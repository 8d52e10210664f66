"""Bench result files: ``results.json``, ``results.md`` (a compact summary, the full table, the target verdicts)
and ``results.png`` (main metric per method with heuristics as reference lines; cost vs quality).

Rows are of three kinds: methods (competitors), diagnostics (``:swap_history``: another user's history, a
check that the persona is used, not a competitor) and heuristics (non-LLM references).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pplug.bench.targets import check_targets, targets_markdown
from pplug.data._json import read_json
from pplug.data.lamp import parse_outputs
from pplug.metrics import HIGHER_IS_BETTER, KIND_METRICS, MAIN_METRIC, per_question


def spec_dir(spec: str) -> str:
    """A folder name for a method spec."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def plain_spec_dir(spec: str) -> str:
    """The folder of the plain run a diagnostic row reuses: ``pplug:swap_history`` -> ``pplug``,
    ``pplug:swap_history@plug.top_k=2`` -> the folder of ``pplug@plug.top_k=2`` (same settings, own history)."""
    return spec_dir(spec.replace(":swap_history", ""))


def row_kind(method: str) -> str:
    """``heuristic`` (non-LLM reference), ``diagnostic`` (swap_history) or ``method`` (a competitor)."""
    if method.startswith("heuristic:"):
        return "heuristic"
    return "diagnostic" if ":swap_history" in method else "method"


def interleaved_latency(out: Path) -> dict[str, float] | None:
    """{run folder name: mean s} from ``OUT/latency_compare.json`` (scripts/latency_compare.py), if present."""
    path = out / "latency_compare.json"
    if not path.is_file():
        return None
    runs = json.loads(path.read_text())["runs"]
    return {Path(run).name: r["mean"] for run, r in runs.items()}


def preds_path(out: Path, method: str, split: str) -> Path:
    """Where a row's predictions on ``split`` are: its run's ``preds_<split>.json``, the plain run's
    ``preds_<split>_swap.json`` for a swap diagnostic, ``OUT/heuristics/preds_<split>_<name>.json`` for a
    heuristic (written by the bench)."""
    if method.startswith("heuristic:"):
        return out / "heuristics" / f"preds_{split}_{spec_dir(method.removeprefix('heuristic:'))}.json"
    if ":swap_history" in method:
        return out / "runs" / plain_spec_dir(method) / f"preds_{split}_swap.json"
    return out / "runs" / spec_dir(method) / f"preds_{split}.json"


def question_scores(out: Path, task, split: str, golds: dict[str, str],
                    methods: list[str]) -> dict[str, np.ndarray]:
    """{row method: per-question main-metric values} for every row whose predictions file in ``out`` covers
    exactly the questions of ``golds`` (in that order); rows without such a file are left out (their
    verdicts then carry no interval)."""
    ids = list(golds)
    gold_list = [golds[i] for i in ids]
    scores: dict[str, np.ndarray] = {}
    for method in methods:
        path = preds_path(out, method, split)
        if not path.is_file():
            continue
        _, preds = parse_outputs(read_json(path), path)
        if set(preds) != set(ids):  # e.g. a run reused from a bench with another --limit
            continue
        scores[method] = per_question(task.kind, gold_list, [preds[i] for i in ids], task.labels)
    return scores


def labels_used(out: Path, spec: str, split: str) -> int | None:
    """Classification: how many distinct labels a method predicted on the evaluation split (a collapse to
    the frequent labels shows here), read from the predictions file its run wrote; None if absent."""
    path = preds_path(out, spec, split)
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


def latency_of(row: dict[str, Any], interleaved: dict[str, float] | None) -> tuple[float | None, bool]:
    """A row's mean batch-1 latency: the interleaved measurement when there is one (True), else its own."""
    if interleaved and spec_dir(row["method"]) in interleaved:
        return interleaved[spec_dir(row["method"])], True
    return row.get("cost", {}).get("latency_mean"), False


def _label(row: dict[str, Any]) -> str:
    kind = row_kind(row["method"])
    return row["method"] + {"diagnostic": " (diagnostic)", "heuristic": " (no LLM)"}.get(kind, "")


def summary_table(kind: str, rows: list[dict[str, Any]], split: str, interleaved: dict[str, float] | None) -> str:
    """A compact table: method, the task's two metrics, n, mean latency, train seconds."""
    metrics = KIND_METRICS[kind]
    head = ["method", *metrics, f"n {split}", "latency s", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    starred = False
    for r in rows:
        if r.get("status") != "ok":
            log = Path(r.get("log", "")).name or "logs/"
            lines.append(f"| {r['method']} | FAILED (logs/{log}) |" + " |" * (len(head) - 2))
            continue
        lat, inter = latency_of(r, interleaved)
        starred |= inter
        m = r.get("metrics", {})
        cells = [_label(r), *[_fmt(m.get(k)) for k in metrics], _fmt(r.get("test_questions")),
                 _fmt(lat, 2) + ("*" if inter else ""), _fmt(r.get("cost", {}).get("train_seconds"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    note = "\n\n\\* measured interleaved in one process (`latency_compare.json`)" if starred else ""
    return "\n".join(lines) + note


def full_table(kind: str, rows: list[dict[str, Any]], split: str) -> str:
    """Every measured column: metrics, labels used, n, train/onboard seconds, per-user state, latency, memory."""
    metrics, spread = KIND_METRICS[kind], kind == "classification"
    head = ["method", *metrics, *(["labels used"] if spread else []), f"n {split}", "train s",
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
    return "\n".join(lines)


def write_results(out: Path, task, cfg, rows: list[dict[str, Any]],
                  golds: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and ``results.png`` for the rows so far; returns the JSON object.

    Args:
        golds: the evaluation questions' golds (id -> output); with them, pairwise target verdicts carry a
            paired-bootstrap interval computed from the rows' prediction files (`question_scores`).
    """
    if task.kind == "classification":
        for r in rows:
            if r.get("status") == "ok" and not r["method"].startswith("heuristic:"):
                r["labels_used"] = labels_used(out, r["method"], cfg.split)
    interleaved = interleaved_latency(out)
    ok = [r["method"] for r in rows if r.get("status") == "ok"]
    scores = question_scores(out, task, cfg.split, golds, ok) if golds else None
    verdicts = check_targets(task.kind, rows, interleaved, scores)
    failed = [r["method"] for r in rows if r.get("status") != "ok"]
    result = {"task": task.name, "data": cfg.data, "config": asdict(cfg), "rows": rows, "targets": verdicts,
              "failed": failed}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    text = (f"Task `{task.name}` ({cfg.data}), {cfg.split} split\n\n"
            + summary_table(task.kind, rows, cfg.split, interleaved) + "\n\n![results](results.png)\n\n"
            + "Targets (computed from the rows):\n\n" + targets_markdown(verdicts) + "\n\n"
            + "<details><summary>Full table (costs, memory, labels used)</summary>\n\n"
            + full_table(task.kind, rows, cfg.split) + "\n\n</details>\n")
    (out / "results.md").write_text(text)
    plot(out / "results.png", task, rows, cfg.split, interleaved)
    return result


def plot(path: Path, task, rows: list[dict[str, Any]], split: str = "test",
         interleaved: dict[str, float] | None = None) -> bool:
    """Main metric per method (value + n labels, heuristics as reference lines, diagnostics hatched apart) and
    latency vs quality. Returns False when no row has the metric (nothing drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = MAIN_METRIC[task.kind]
    ok = [r for r in rows if r.get("status") == "ok" and metric in r.get("metrics", {})]
    if not ok:
        return False
    bars = [r for r in ok if row_kind(r["method"]) == "method"] + \
        [r for r in ok if row_kind(r["method"]) == "diagnostic"]
    refs = [r for r in ok if row_kind(r["method"]) == "heuristic"]
    values = [r["metrics"][metric] for r in ok]
    top = max(values + [0.0]) or 1.0
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, max(4.0, 0.42 * len(bars) + 2.2)),
                                   gridspec_kw={"width_ratios": [1.25, 1]})
    ys = list(range(len(bars)))
    for y, r in zip(ys, bars, strict=True):
        v, diag = r["metrics"][metric], row_kind(r["method"]) == "diagnostic"
        color = "lightgray" if diag else ("tab:green" if r["method"].startswith("pplug") else "tab:blue")
        ax1.barh(y, v, color=color, hatch="//" if diag else None, edgecolor="dimgray", linewidth=0.6)
        ax1.plot([v], [y], marker="|", color="black", markersize=12)  # visible even at 0
        ax1.text(v + top * 0.01, y, f"{v:.3f}  (n={r.get('test_questions', '?')})", va="center", fontsize=8)
    ax1.set_yticks(ys, [_label(r) for r in bars], fontsize=8)
    n_methods = sum(row_kind(r["method"]) == "method" for r in bars)
    if 0 < n_methods < len(bars):
        ax1.axhline(n_methods - 0.5, color="gray", linewidth=0.8, linestyle=":")  # diagnostics below the line
    ax1.invert_yaxis()
    styles = ["--", ":", "-.", (0, (5, 1))]
    for i, r in enumerate(refs):
        v = r["metrics"][metric]
        ax1.axvline(v, color="tab:red", linestyle=styles[i % len(styles)], linewidth=1.2,
                    label=f"{r['method'].removeprefix('heuristic:')} {v:.3f}")
    if refs:
        ax1.legend(title="non-LLM reference", fontsize=7, title_fontsize=7, loc="lower right")
    ax1.set_xlim(0, top * 1.3)
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    ax1.set_xlabel(f"{metric} ({better} is better)")
    n = max((r.get("test_questions") or 0) for r in ok)
    ax1.set_title(f"{task.name}: {metric} on {split} (n={n} questions)", fontsize=10)

    points = []
    for r in bars:
        lat, inter = latency_of(r, interleaved)
        if lat:
            points.append((r, lat, inter))
    for i, (r, lat, inter) in enumerate(points, 1):
        diag = row_kind(r["method"]) == "diagnostic"
        ax2.scatter(lat, r["metrics"][metric], marker="D" if inter else "o", s=36,
                    color="lightgray" if diag else "tab:green" if r["method"].startswith("pplug") else "tab:blue",
                    edgecolors="dimgray", label=f"{i} {_label(r)}" + (" (interleaved)" if inter else ""))
        ax2.annotate(str(i), (lat, r["metrics"][metric]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for i, r in enumerate(refs):
        ax2.axhline(r["metrics"][metric], color="tab:red", linestyle=styles[i % len(styles)], linewidth=1.0)
    if points:
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax2.set_xlim(left=0, right=max(p[1] for p in points) * 1.2)
    else:
        ax2.text(0.5, 0.5, "no latency measured", ha="center", transform=ax2.transAxes)
    ax2.set_ylim(-top * 0.03, top * 1.15)  # from 0 (a point at 0 stays visible)
    ax2.set_xlabel("mean latency per question (s, batch 1)\ndiamonds: measured interleaved in one process")
    ax2.set_ylabel(metric)
    ax2.set_title("cost vs quality (red lines: non-LLM references)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
