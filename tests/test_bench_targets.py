"""Target verdicts are computed from the bench rows: met, not met, or not measured."""

from __future__ import annotations

from pplug.bench.targets import base_name, check_targets, targets_markdown


def row(method, value, metric="accuracy", **cost):
    return {"method": method, "status": "ok", "metrics": {metric: value}, "cost": cost}


def by_target(verdicts):
    return {v["target"]: v for v in verdicts}


def test_base_name_drops_overrides():
    assert base_name("pplug:no_persona@train.epochs=1") == "pplug:no_persona"
    assert base_name("rag-bm25") == "rag-bm25"


def test_classification_targets():
    rows = [row("pplug", 0.70, onboard_seconds=0.5, state_bytes=40_000, latency_mean=1.0),
            row("zero-shot", 0.40), row("rag-bm25", 0.70, latency_mean=3.0),
            row("pplug:no_persona@train.epochs=1", 0.55),
            row("oppu", 0.60, onboard_seconds=30.0, state_bytes=2_000_000),
            row("pplug:swap_history", 0.30), row("heuristic:user-majority", 0.72),
            {"method": "task-lora", "status": "failed", "error": "boom"}]
    v = by_target(check_targets("classification", rows))
    assert v["PPlug beats zero-shot (accuracy)"]["met"] is True
    assert v["PPlug beats rag-bm25 (accuracy)"]["met"] is False  # a tie is not a win
    assert v["PPlug beats task-lora (accuracy)"]["met"] is None  # failed row: not measured
    assert v["PPlug beats pplug:no_persona (accuracy)"]["met"] is True
    assert v["onboarding a user: PPlug >= 1000x cheaper than OPPU"]["met"] is False
    assert v["onboarding a user: PPlug >= 1000x cheaper than OPPU"]["detail"].startswith("60x")
    assert v["per-user state: PPlug >= 1000x cheaper than OPPU"]["detail"].startswith("50x")
    assert v["PPlug latency <= 0.5x rag-bm25"]["met"] is True
    maj = v["pplug beats the user's-majority heuristic"]
    assert maj["met"] is False and "not yet using the history well" in maj["detail"]
    assert "pplug:swap_history beats the user's-majority heuristic" not in v  # a diagnostic, not a method
    text = targets_markdown(check_targets("classification", rows))
    assert "**NOT met**" in text and "not measured" in text


def test_lower_is_better_for_rating_and_no_majority_check_for_generation():
    v = by_target(check_targets("rating", [row("pplug", 0.3, "mae"), row("zero-shot", 0.5, "mae")]))
    assert v["PPlug beats zero-shot (mae)"]["met"] is True
    gen = check_targets("generation", [row("pplug", 0.2, "rouge-1"), row("heuristic:user-majority", 0.9, "rouge-1")])
    assert not any("majority" in t["target"] for t in gen)


def test_interleaved_latency_is_preferred():
    rows = [row("pplug", 0.5, latency_mean=1.0), row("rag-bm25", 0.4, latency_mean=3.0)]
    v = by_target(check_targets("classification", rows, latency={"pplug": 1.5, "rag-bm25": 2.5}))
    t = v["PPlug latency <= 0.5x rag-bm25"]
    assert t["met"] is False and t["detail"].startswith("0.60x") and "interleaved" in t["detail"]


def test_markdown_folds_the_heuristic_checks_into_one_line():
    rows = [row("pplug", 0.70), row("zero-shot", 0.20), row("heuristic:user-majority", 0.72)]
    text = targets_markdown(check_targets("classification", rows))
    folded = [ln for ln in text.splitlines() if "an LLM method beats the user's-majority" in ln]
    assert len(folded) == 1 and "NOT met" in folded[0] and "pplug 0.700" in folded[0]
    assert not any(ln.startswith("- pplug beats the user's-majority") for ln in text.splitlines())


def test_report_summary_marks_kinds_and_interleaved_latency(tmp_path):
    import json

    from pplug.bench.report import plot, summary_table
    from pplug.tasks import get_task

    (tmp_path / "latency_compare.json").write_text(json.dumps({"runs": {"b/pplug": {"mean": 1.5}}}))
    rows = [row("zero-shot", 0.0), row("pplug", 0.7), row("pplug:swap_history", 0.3),
            row("heuristic:user-majority", 0.72), {"method": "oppu", "status": "failed", "log": "x/logs/oppu.log"}]
    for r in rows[:3]:
        r["cost"], r["test_questions"] = {"latency_mean": 2.0}, 4
    from pplug.bench.report import interleaved_latency

    table = summary_table("classification", rows, "test", interleaved_latency(tmp_path))
    assert "| pplug | 0.700 |" in table and "1.50*" in table and "| zero-shot | 0.000 |" in table
    assert "(diagnostic)" in table and "(no LLM)" in table and "FAILED (logs/oppu.log)" in table
    assert plot(tmp_path / "r.png", get_task("synth_topic"), rows) and (tmp_path / "r.png").stat().st_size > 1000


def test_swap_diagnostic_reuses_the_run_with_its_own_settings():
    from pplug.bench.report import plain_spec_dir, spec_dir

    assert plain_spec_dir("pplug:swap_history") == spec_dir("pplug")
    assert plain_spec_dir("pplug:swap_history@plug.placement=after_text") == spec_dir("pplug@plug.placement=after_text")
    assert plain_spec_dir("pplug-rag:swap_history") == spec_dir("pplug-rag")


def test_issue_13_targets_swap_drop_majority_margin_and_f1():
    def crow(method, acc, f1):
        return {"method": method, "status": "ok", "metrics": {"accuracy": acc, "f1": f1}, "cost": {}}

    rows = [crow("pplug", 0.80, 0.30), crow("pplug:swap_history", 0.70, 0.2),
            crow("heuristic:user-majority", 0.76, 0.25)]
    v = by_target(check_targets("classification", rows))
    swap = v["persona used: pplug:swap_history >= 5% worse than PPlug (accuracy)"]
    assert swap["met"] is True and "drop +12.5%" in swap["detail"]
    assert v["PPlug >= the user's-majority heuristic (accuracy)"]["met"] is True
    assert v["PPlug >= the user's-majority heuristic + 0.05 (accuracy)"]["met"] is False  # .04 short of .05
    assert v["PPlug macro-F1 above the user's-majority heuristic's"]["met"] is True
    rows[0]["metrics"]["accuracy"] = 0.76  # a tie meets ">=" but not "+ 0.05"; swap drop 7.9%
    v = by_target(check_targets("classification", rows))
    assert v["PPlug >= the user's-majority heuristic (accuracy)"]["met"] is True
    assert v["PPlug >= the user's-majority heuristic + 0.05 (accuracy)"]["met"] is False
    rows[1]["metrics"]["accuracy"] = 0.74  # drop 2.6%: the persona is barely used
    assert by_target(check_targets("classification", rows))[
        "persona used: pplug:swap_history >= 5% worse than PPlug (accuracy)"]["met"] is False


def test_swap_drop_is_a_rise_of_the_error_for_lower_is_better_metrics():
    rows = [row("pplug", 0.50, "mae"), row("pplug:swap_history", 0.60, "mae")]
    v = by_target(check_targets("rating", rows))["persona used: pplug:swap_history >= 5% worse than PPlug (mae)"]
    assert v["met"] is True and "drop +20.0%" in v["detail"]
    rows[1]["metrics"]["mae"] = 0.45  # another user's history is better: no drop
    v = by_target(check_targets("rating", rows))["persona used: pplug:swap_history >= 5% worse than PPlug (mae)"]
    assert v["met"] is False


def test_verdicts_carry_paired_intervals_and_say_when_within_noise():
    import numpy as np

    rng = np.random.default_rng(0)
    n = 56
    base = (rng.random(n) < 0.6).astype(float)
    better = base.copy()
    better[base == 0] = 1.0  # right wherever the baseline is right, and on every other question
    noisy = base.copy()
    flip = rng.choice(n, 2, replace=False)
    noisy[flip] = 1 - noisy[flip]  # two questions apart
    rows = [row("pplug", float(better.mean())), row("zero-shot", float(base.mean())),
            row("rag-bm25", float(noisy.mean()))]
    scores = {"pplug": better, "zero-shot": base, "rag-bm25": noisy}
    v = by_target(check_targets("classification", rows, scores=scores))
    clear = v["PPlug beats zero-shot (accuracy)"]
    assert clear["met"] is True and clear["clear"] is True and clear["interval"]["low"] > 0
    rows[0]["metrics"]["accuracy"], scores["pplug"] = float(base.mean()), base  # pplug = the baseline
    v = by_target(check_targets("classification", rows, scores=scores))
    near = v["PPlug beats rag-bm25 (accuracy)"]
    assert near["clear"] is False and near["interval"]["low"] <= 0 <= near["interval"]["high"]
    assert "within noise" in targets_markdown(list(v.values()))
    # a row without per-question scores: a verdict, no interval
    assert "interval" not in v["PPlug beats task-lora (accuracy)"]


def test_paired_bootstrap_known_cases():
    import numpy as np
    import pytest

    from pplug.bench.significance import paired_bootstrap

    a = np.array([1.0, 0.0, 1.0, 1.0])
    same = paired_bootstrap(a, a)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    shifted = paired_bootstrap(a + 0.25, a)  # every question 0.25 better: no uncertainty at all
    assert shifted["low"] == pytest.approx(0.25) and shifted["high"] == pytest.approx(0.25)
    x = np.array([1.0] * 30 + [0.0] * 26)
    y = np.array([1.0] * 26 + [0.0] * 30)
    r = paired_bootstrap(x, y)
    assert r["difference"] == pytest.approx(4 / 56) and 0 <= r["low"] < 4 / 56 < r["high"]  # never worse
    mixed = paired_bootstrap(x, np.roll(y, 28))  # right on other questions: the sign is uncertain
    assert mixed["low"] < 0 < mixed["high"]
    rel = paired_bootstrap(x, y, relative=True)
    assert rel["difference"] == pytest.approx(4 / 30)
    assert paired_bootstrap(x, y, seed=1)["low"] == pytest.approx(paired_bootstrap(x, y, seed=1)["low"])  # seeded
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(x, y[:3])
