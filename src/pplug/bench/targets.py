"""The targets a benchmark must make visible, checked from its rows (quality, onboarding, state, latency).

Pure functions over the rows ``pplug bench`` writes, so the verdicts in ``results.md`` are computed, never
typed in by hand. A target whose rows are missing (method not run or failed) is reported as "not measured".
Given the rows' per-question scores, a quality verdict also carries the paired-bootstrap 95% interval of the
difference it rests on (`pplug.bench.significance`) and says whether it is clear or within noise.

Issue 13's targets: PPlug beats zero-shot, rag-bm25, task-lora and the no_persona ablation; the persona is
used (``pplug:swap_history`` at least 5% worse than PPlug); on classification PPlug >= the user's-majority
heuristic, >= that heuristic + 0.05, and above its macro-F1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pplug.bench.significance import interval_text, paired_bootstrap
from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC

QUALITY_BASELINES = ("zero-shot", "rag-bm25", "task-lora", "pplug:no_persona")
SPEEDUP = 1000.0  # onboarding and per-user state: PPlug must be this many times cheaper than OPPU
LATENCY_RATIO = 0.5  # a PPlug request must cost at most this share of a rag-bm25 (k=4) request
SWAP_DROP = 0.05  # the persona is used: another user's history costs PPlug at least this share of its score
MAJORITY_MARGIN = 0.05  # classification: PPlug must beat the user's-majority label by this much (accuracy)


def base_name(spec: str) -> str:
    """``pplug:no_persona@train.epochs=1`` -> ``pplug:no_persona`` (the method and variant, no overrides)."""
    return spec.split("@", 1)[0]


def _find(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The first successful row whose method (without overrides) is ``name``."""
    return next((r for r in rows if r.get("status") == "ok" and base_name(r["method"]) == name), None)


def _beats(a: float, b: float, metric: str) -> bool:
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def check_targets(kind: str, rows: list[dict[str, Any]], latency: dict[str, float] | None = None,
                  scores: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One verdict per target: {"target", "met": True | False | None (not measured), "detail"}; a pairwise
    quality verdict with per-question scores for both rows adds "interval" (the bootstrap result) and "clear"
    (True when the whole interval is on the verdict's side of the threshold, False: within noise).

    Args:
        latency: optional {"pplug": s, "rag-bm25": s} mean batch-1 seconds measured interleaved in one
            process (``scripts/latency_compare.py``); preferred over the per-row figures, which come from
            separate processes and drift when other jobs share the machine.
        scores: optional {row method: per-question main-metric values, same questions and order for every row}
            (``pplug.bench.report.question_scores``).
    """
    metric = MAIN_METRIC[kind]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    pplug = _find(rows, "pplug")
    scores = scores or {}
    out: list[dict[str, Any]] = []

    def add(target: str, met: bool | None, detail: str, interval: dict[str, float] | None = None,
            clear: bool | None = None) -> None:
        out.append({"target": target, "met": met, "detail": detail}
                   | ({"interval": interval, "clear": clear} if interval else {}))

    def compare(target: str, a_row: dict[str, Any] | None, b_row: dict[str, Any] | None, a_name: str,
                b_name: str, margin: float = 0.0, relative: bool = False, ties: bool = False) -> None:
        """A better than B by more than ``margin`` (``ties``: at least ``margin``); ``relative``: the gain is
        a share of A's score (the swap drop; at least ``margin``)."""
        if a_row is None or b_row is None:
            add(target, None, "no successful " + (a_name if a_row is None else b_name) + " row")
            return
        a, b = a_row["metrics"][metric], b_row["metrics"][metric]
        gain = sign * (a - b)
        if relative:
            gain, ties = (gain / abs(a) if a else 0.0), True
            detail = f"{a:.3f} vs {b:.3f}: drop {gain:+.1%} (needs >= {margin:.0%})"
        else:
            detail = f"{a:.3f} vs {b:.3f}" + (f" + {margin:.2f}" if margin else "")
        met = gain >= margin - 1e-12 if ties else gain > margin + 1e-12
        sa, sb = scores.get(a_row["method"]), scores.get(b_row["method"])
        if sa is None or sb is None or len(sa) != len(sb):
            add(target, met, detail)
            return
        iv = paired_bootstrap(sign * sa, sign * sb, relative=relative)
        clear = iv["low"] > margin if met else iv["high"] < margin
        add(target, met, f"{detail}; {interval_text(iv, relative)}", iv, clear)

    for name in QUALITY_BASELINES:
        compare(f"PPlug beats {name} ({metric})", pplug, _find(rows, name), "pplug", name)

    swap = _find(rows, "pplug:swap_history")
    compare(f"persona used: pplug:swap_history >= {SWAP_DROP:.0%} worse than PPlug ({metric})", pplug, swap,
            "pplug", "pplug:swap_history", SWAP_DROP, relative=True)

    oppu = _find(rows, "oppu")
    for key, label in (("onboard_seconds", "onboarding a user"), ("state_bytes", "per-user state")):
        target = f"{label}: PPlug >= {SPEEDUP:.0f}x cheaper than OPPU"
        a = (pplug or {}).get("cost", {}).get(key)
        b = (oppu or {}).get("cost", {}).get(key)
        if not a or not b:
            add(target, None, "needs pplug and oppu rows with this cost")
            continue
        add(target, b / a >= SPEEDUP, f"{b / a:.0f}x ({b:.4g} vs {a:.4g})")

    rag = _find(rows, "rag-bm25")
    target = f"PPlug latency <= {LATENCY_RATIO}x rag-bm25"
    a = (pplug or {}).get("cost", {}).get("latency_mean")
    b = (rag or {}).get("cost", {}).get("latency_mean")
    how = "per-row"
    if latency and latency.get("pplug") and latency.get("rag-bm25"):
        a, b, how = latency["pplug"], latency["rag-bm25"], "interleaved in one process"
    if not a or not b:
        add(target, None, "needs pplug and rag-bm25 rows with latency")
    else:
        add(target, a / b <= LATENCY_RATIO, f"{a / b:.2f}x ({a:.2f} s vs {b:.2f} s, {how})")

    majority = _find(rows, "heuristic:user-majority")
    if kind == "classification":
        name = "heuristic:user-majority"
        compare(f"PPlug >= the user's-majority heuristic ({metric})", pplug, majority, "pplug", name, ties=True)
        compare(f"PPlug >= the user's-majority heuristic + {MAJORITY_MARGIN:.2f} ({metric})", pplug, majority,
                "pplug", name, margin=MAJORITY_MARGIN, ties=True)
        target = "PPlug macro-F1 above the user's-majority heuristic's"
        if pplug is None or majority is None or "f1" not in pplug["metrics"] or "f1" not in majority["metrics"]:
            add(target, None, "no successful " + ("pplug" if pplug is None else name) + " row with macro-F1")
        else:
            a, b = pplug["metrics"]["f1"], majority["metrics"]["f1"]
            add(target, a > b, f"{a:.3f} vs {b:.3f}")
    if kind == "classification" and majority is not None:
        ref = majority["metrics"][metric]
        for r in rows:
            if r.get("status") != "ok" or r["method"].startswith("heuristic:") or ":swap_history" in r["method"]:
                continue
            a = r["metrics"][metric]
            beats = _beats(a, ref, metric)
            add(f"{r['method']} beats the user's-majority heuristic", beats,
                f"{a:.3f} vs {ref:.3f}" + ("" if beats else ": not yet using the history well"))
    return out


def targets_markdown(verdicts: list[dict[str, Any]]) -> str:
    """A markdown list: met / NOT met / not measured, with the figures; the per-method checks against the
    user's-majority heuristic are folded into one line."""
    word = {True: "met", False: "**NOT met**", None: "not measured"}
    noise = {True: "", False: ", within noise", None: ""}
    suffix = " beats the user's-majority heuristic"
    lines = [f"- {v['target']}: {word[v['met']]}{noise[v.get('clear')]} ({v['detail']})" for v in verdicts
             if not v["target"].endswith(suffix)]
    vs = [v for v in verdicts if v["target"].endswith(suffix)]
    if vs:
        ref = vs[0]["detail"].split(" vs ")[1].split(":")[0]
        winners = [v["target"].removesuffix(suffix) for v in vs if v["met"]]
        shown = ", ".join(f"{v['target'].removesuffix(suffix)} {v['detail'].split(' vs ')[0]}" for v in vs)
        verdict = f"met by {', '.join(winners)}" if winners else "**NOT met** by any LLM method"
        lines.append(f"- an LLM method beats the user's-majority heuristic ({ref}): {verdict} ({shown})")
    return "\n".join(lines)
