"""The targets a benchmark must make visible, checked from its rows (quality, onboarding, state, latency).

Pure functions over the rows ``pplug bench`` writes, so the verdicts in ``results.md`` are computed, never
typed in by hand. A target whose rows are missing (method not run or failed) is reported as "not measured".
"""

from __future__ import annotations

from typing import Any

from pplug.metrics import HIGHER_IS_BETTER, MAIN_METRIC

QUALITY_BASELINES = ("zero-shot", "rag-bm25", "task-lora", "pplug:no_persona")
SPEEDUP = 1000.0  # onboarding and per-user state: PPlug must be this many times cheaper than OPPU
LATENCY_RATIO = 0.5  # a PPlug request must cost at most this share of a rag-bm25 (k=4) request


def base_name(spec: str) -> str:
    """``pplug:no_persona@train.epochs=1`` -> ``pplug:no_persona`` (the method and variant, no overrides)."""
    return spec.split("@", 1)[0]


def _find(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The first successful row whose method (without overrides) is ``name``."""
    return next((r for r in rows if r.get("status") == "ok" and base_name(r["method"]) == name), None)


def _beats(a: float, b: float, metric: str) -> bool:
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def check_targets(kind: str, rows: list[dict[str, Any]],
                  latency: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One verdict per target: {"target", "met": True | False | None (not measured), "detail"}.

    Args:
        latency: optional {"pplug": s, "rag-bm25": s} mean batch-1 seconds measured interleaved in one
            process (``scripts/latency_compare.py``); preferred over the per-row figures, which come from
            separate processes and drift when other jobs share the machine.
    """
    metric = MAIN_METRIC[kind]
    pplug = _find(rows, "pplug")
    out: list[dict[str, Any]] = []

    def add(target: str, met: bool | None, detail: str) -> None:
        out.append({"target": target, "met": met, "detail": detail})

    for name in QUALITY_BASELINES:
        other = _find(rows, name)
        target = f"PPlug beats {name} ({metric})"
        if pplug is None or other is None:
            add(target, None, "no successful " + ("pplug" if pplug is None else name) + " row")
            continue
        a, b = pplug["metrics"][metric], other["metrics"][metric]
        add(target, _beats(a, b, metric), f"{a:.3f} vs {b:.3f}")

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
    suffix = " beats the user's-majority heuristic"
    lines = [f"- {v['target']}: {word[v['met']]} ({v['detail']})" for v in verdicts
             if not v["target"].endswith(suffix)]
    vs = [v for v in verdicts if v["target"].endswith(suffix)]
    if vs:
        ref = vs[0]["detail"].split(" vs ")[1].split(":")[0]
        winners = [v["target"].removesuffix(suffix) for v in vs if v["met"]]
        shown = ", ".join(f"{v['target'].removesuffix(suffix)} {v['detail'].split(' vs ')[0]}" for v in vs)
        verdict = f"met by {', '.join(winners)}" if winners else "**NOT met** by any LLM method"
        lines.append(f"- an LLM method beats the user's-majority heuristic ({ref}): {verdict} ({shown})")
    return "\n".join(lines)
