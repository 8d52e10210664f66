"""`pplug bench` on tiny models: one row per method (each in its own process), a failing method is
reported as failed while the others finish, heuristic rows, and the three result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pplug.cli import main
from pplug.synth import SynthConfig, synthesize


def run_cli(argv: list[str], sets: list[str], code: int = 0) -> None:
    """`pplug bench ARGV --set S ...` in-process; the exit code must be ``code``."""
    for s in sets:
        argv = [*argv, "--set", s]
    try:
        main(argv)
    except SystemExit as e:
        assert (e.code or 0) == code
    else:
        assert code == 0


def test_bench_runs_methods_side_by_side(tmp_path, tiny_llama_dir, tiny_bert_dir, monkeypatch, capsys):
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path / "cache"))
    data = synthesize(tmp_path / "data", SynthConfig(n_train_users=3, n_dev_users=2, n_test_users=2, min_profile=3,
                                                     max_profile=4))["synth_topic"]
    sets = [f"backbone.name_or_path={tiny_llama_dir}", f"encoder.name_or_path={tiny_bert_dir}", "train.max_steps=1",
            "train.augment_copies=0", "train.progress=false", "decode.max_new_tokens=3"]
    argv = ["bench", "--data", str(data), "--out", str(tmp_path / "bench"), "--limit", "3", "--latency-questions", "2",
            "--methods", f"zero-shot,pplug,pplug:swap_history,zero-shot@backbone.name_or_path={tmp_path / 'nope'}"]
    run_cli(argv, sets, code=1)  # a method failed: non-zero exit, results still written
    out = tmp_path / "bench"
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    bad = next(r for r in result["rows"] if r["method"].startswith("zero-shot@"))
    assert bad["status"] == "failed" and "model folder not found" in bad["error"] and bad["error_tail"]
    assert result["failed"] == [bad["method"]] and Path(bad["log"]).parent == out / "logs"
    assert "model folder not found" in Path(bad["log"]).read_text()
    assert (out / "logs" / "pplug.log").is_file()
    err = capsys.readouterr().err
    assert "FAILED" in err and "model folder not found" in err  # the error tail is shown
    for name in ("zero-shot", "pplug", "pplug:swap_history"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["test_questions"] == 3 and set(rows[name]["metrics"]) == {"accuracy", "f1"}
        assert rows[name]["cost"]["latency_mean"] > 0
    assert rows["pplug"]["cost"]["state_bytes"] > 0 and rows["pplug"]["cost"]["onboard_seconds"] > 0
    assert rows["zero-shot"]["cost"]["state_bytes"] == 0
    assert rows["pplug:swap_history"]["cost"]["train_seconds"] == 0.0  # reuses the trained pplug run
    assert {"heuristic:global-majority", "heuristic:user-majority"} <= set(rows)
    assert rows["pplug"]["labels_used"] >= 1 and rows["pplug:swap_history"]["labels_used"] >= 1
    assert rows["heuristic:user-majority"]["labels_used"] >= 1
    table = (out / "results.md").read_text()
    assert "| labels used |" in table and "Targets" in table
    assert "| pplug |" in table and "FAILED" in table
    assert "| pplug:swap_history (diagnostic) |" in table and "(no LLM) |" in table  # summary marks kinds
    assert (out / "results.png").stat().st_size > 1000
    # the verdicts carry paired intervals, read from the prediction files (the heuristics' too)
    assert (out / "heuristics" / "preds_test_user-majority.json").is_file()
    v = {t["target"]: t for t in result["targets"]}
    beats = v["PPlug beats zero-shot (accuracy)"]
    assert beats["interval"]["questions"] == 3 and beats["clear"] in (True, False) and "interval [" in beats["detail"]
    assert "interval" in v["PPlug >= the user's-majority heuristic + 0.05 (accuracy)"]
    assert "interval" in v["persona used: pplug:swap_history >= 5% worse than PPlug (accuracy)"]


def test_bench_dev_split_and_oppu_reuses_the_task_stage(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path / "cache"))
    data = synthesize(tmp_path / "data", SynthConfig(n_train_users=2, n_dev_users=2, n_test_users=1, min_profile=3,
                                                     max_profile=4))["synth_topic"]
    argv = ["bench", "--data", str(data), "--out", str(tmp_path / "bench"), "--split", "dev", "--limit", "2",
            "--latency-questions", "1", "--users", "1", "--methods", "task-lora,oppu"]
    run_cli(argv, [f"backbone.name_or_path={tiny_llama_dir}", "train.max_steps=2", "train.progress=false",
                   "decode.max_new_tokens=3"])
    out = tmp_path / "bench"
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["task-lora"]["status"] == "ok" and rows["oppu"]["status"] == "ok", rows
    assert rows["oppu"]["test_questions"] == 2  # the first 2 dev questions
    assert rows["oppu"]["train"]["task_stage_from"].endswith("task-lora")  # not trained twice
    oppu_s, lora_s = rows["oppu"]["cost"]["train_seconds"], rows["task-lora"]["cost"]["train_seconds"]
    assert abs(oppu_s - lora_s) < 0.2  # the task stage's own seconds, carried over (not a second training)
    saved = json.loads((out / "runs" / "oppu" / "config.json").read_text())
    assert saved["train"]["select_on_dev"] is False  # never select on the split being reported
    assert len(list((out / "runs" / "oppu" / "users").iterdir())) == 1  # --users 1, also after the latency probe
    assert "dev split" in (out / "results.md").read_text() and "| n dev |" in (out / "results.md").read_text()


def test_bench_refuses_unknown_methods_and_fields_before_running(tmp_path, capsys):
    data = synthesize(tmp_path / "data", SynthConfig(n_train_users=2, n_dev_users=1, n_test_users=1, min_profile=3,
                                                     max_profile=4))["synth_topic"]
    for methods, fragment in (("zero-shot,no-such-method", "unknown method"), ("pplug@plug.nope=1", "unknown field")):
        with pytest.raises(SystemExit) as e:
            main(["bench", "--data", str(data), "--out", str(tmp_path / "b"), "--methods", methods])
        assert e.value.code == 2 and fragment in capsys.readouterr().err
        assert not (tmp_path / "b" / "runs").exists()


def test_bench_reuses_a_row_only_for_the_same_settings(tmp_path, tiny_llama_dir, tiny_bert_dir, monkeypatch, capsys):
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path / "cache"))
    data = synthesize(tmp_path / "data", SynthConfig(n_train_users=2, n_dev_users=1, n_test_users=3, min_profile=3,
                                                     max_profile=4))["synth_topic"]
    sets = [f"backbone.name_or_path={tiny_llama_dir}", f"encoder.name_or_path={tiny_bert_dir}", "train.max_steps=1",
            "train.augment_copies=0", "train.progress=false"]
    out = tmp_path / "bench"
    weights = out / "runs" / "pplug" / "model.safetensors"

    def bench(limit: int, *extra: str) -> dict:
        argv = ["bench", "--data", str(data), "--out", str(out), "--limit", str(limit), "--latency-questions", "1",
                "--methods", "pplug", *extra]
        run_cli(argv, sets + [s for s in extra if "=" in s])
        return {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}

    assert bench(2)["pplug"]["test_questions"] == 2
    trained_at = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert bench(2)["pplug"]["test_questions"] == 2  # same settings: the row is reused
    assert "reusing" in capsys.readouterr().err
    rows = bench(3)  # a larger --limit: evaluated again, the finished training is not redone
    err = capsys.readouterr().err
    assert rows["pplug"]["test_questions"] == 3 and "limit: 2 -> 3" in err and "from scratch" not in err
    assert weights.stat().st_mtime_ns == trained_at
    from pplug import kind_defaults  # a default that changed since the row was made: the row runs again

    monkeypatch.setitem(kind_defaults.PER_KIND["classification"], "decode.label_shift", 0.0)
    bench(3)
    err = capsys.readouterr().err
    assert "settings decode.label_shift: auto -> 0.0" in err and "from scratch" not in err
    assert weights.stat().st_mtime_ns == trained_at  # the training settings did not change: only evaluated again
    run_cli(["bench", "--data", str(data), "--out", str(out), "--limit", "3", "--latency-questions", "1",
             "--methods", "pplug"], sets + ["train.lr=0.01"])  # other training settings: trained again
    err = capsys.readouterr().err
    assert "trained with other settings (train.lr: 0.001 -> 0.01)" in err and weights.stat().st_mtime_ns != trained_at
    assert json.loads((out / "runs" / "pplug" / "config.json").read_text())["train"]["lr"] == 0.01
    retrained_at = weights.stat().st_mtime_ns
    run_cli(["bench", "--data", str(data), "--out", str(out), "--limit", "3", "--latency-questions", "1",
             "--methods", "pplug", "--fresh"], sets + ["train.lr=0.01"])
    assert "--fresh: training from scratch" in capsys.readouterr().err and weights.stat().st_mtime_ns != retrained_at


def test_resume_decision_ignores_runtime_settings(tmp_path):
    from pplug.bench.worker import resume_decision
    from pplug.config import RunConfig

    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    saved = RunConfig(method="oppu", task="synth_topic")
    saved.save(run / "config.json")
    assert resume_decision(saved, tmp_path / "elsewhere", fresh=False) == (True, None)  # nothing kept
    same = RunConfig(method="oppu", task="synth_topic")
    same.decode.max_new_tokens, same.decode.label_prior, same.lora.users, same.device = 5, "auto", 3, "cpu"
    assert resume_decision(same, run, fresh=False) == (True, None)
    assert resume_decision(same, run, fresh=True)[0] is False
    other = RunConfig(method="oppu", task="synth_topic")
    other.lora.task_lr = 0.5
    resume, why = resume_decision(other, run, fresh=False)
    assert resume is False and "lora.task_lr" in why


def test_generation_heuristic_encodes_through_the_embedding_cache(tmp_path, tiny_bert_dir, monkeypatch):
    from pplug.bench.run import BenchConfig, heuristic_rows
    from pplug.data import load_split
    from pplug.embedding_cache import EmbeddingCache
    from pplug.encoders import EncoderConfig, load_encoder
    from pplug.tasks import get_task

    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path / "cache"))
    data = synthesize(tmp_path / "data", SynthConfig(n_train_users=2, n_dev_users=1, n_test_users=2, min_profile=3,
                                                     max_profile=4))["synth_title"]
    task = get_task("synth_title")
    test = load_split(data, "test", task.name)
    cfg = BenchConfig(data=str(data), methods=["pplug"], out=str(tmp_path / "b"),
                      overrides=[f"encoder.name_or_path={tiny_bert_dir}"])
    rows = heuristic_rows(cfg, task, test)
    assert [r["method"] for r in rows] == ["heuristic:user-nearest-item"] and rows[0]["test_questions"] == len(test)
    name = load_encoder(EncoderConfig(name_or_path=str(tiny_bert_dir))).name
    items = [task.render_item(it) for q in test.questions for it in q.profile]
    with EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite", name) as cache:  # what PPlug's run reads back
        assert all(v is not None for v in cache.get_many(items))
    assert heuristic_rows(cfg, task, test)[0]["metrics"] == rows[0]["metrics"]  # from the cache: same figures


def test_methods_split_keeps_a_specs_several_settings_together():
    from pplug.cli.bench_cmd import split_specs

    assert split_specs("zero-shot, rag-bm25@retrieval.show=output,retrieval.k=8,pplug:swap_history,,"
                       "pplug@plug.placement=after_text") == [
        "zero-shot", "rag-bm25@retrieval.show=output,retrieval.k=8", "pplug:swap_history",
        "pplug@plug.placement=after_text"]
    assert split_specs("train.lr=1,pplug") == ["train.lr=1", "pplug"]  # no spec to continue: refused later
