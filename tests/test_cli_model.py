"""CLI behaviour users rely on: --version, defaults in --help, one-line errors (exit 2) checked before models
load, --set on eval/predict, finished run folders (no resume state, safe checkpoints, one file mode), --quiet."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch

from pplug.cli import main
from pplug.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=3, n_dev_users=2, n_test_users=2, min_profile=3, max_profile=4)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


@pytest.fixture(autouse=True)
def loud_again():
    yield
    from pplug.progress import set_quiet

    set_quiet(False)


def call(argv, capsys, code=0):
    try:
        main(argv)
    except SystemExit as e:
        assert (e.code or 0) == code, capsys.readouterr().err
    else:
        assert code == 0
    return capsys.readouterr()


def train_argv(data, out, backbone, encoder, *extra):
    return ["train", "--method", "pplug", "--data", str(data), "--out", str(out), "--max-steps", "1",
            "--augment-copies", "0", "--dev-limit", "2", "--persona-tokens", "2", "--backbone", str(backbone),
            "--encoder", str(encoder), "--set", "decode.max_new_tokens=2", *extra]


def test_version_and_help_show_defaults(capsys, monkeypatch):
    assert call(["--version"], capsys).out.strip() == "pplug 0.1.0"
    monkeypatch.setenv("COLUMNS", "250")
    text = call(["train", "--help"], capsys).out
    line = next(ln for ln in text.splitlines() if "--augment-copies " in ln and "<int" in ln)
    assert "default: (10)" in line  # the config default, though the flag itself defaults to "unset"
    assert "--train-limit" in text and "--limit " not in text  # one meaning for --limit
    assert "--keep-checkpoint" in text and "--resume" in text and "--no-resume" in text
    text = call(["eval", "--help"], capsys).out
    assert "--no-swap-history" in text and "--set" in text and "--quiet" in text


@pytest.mark.parametrize("argv, fragment", [
    (["--persona-tokens", "0"], "persona-tokens"),
    (["--set", "plug.ablation=nope"], "ablation"),
    (["--set", "decode.classify=nope"], "classify"),
    (["--set", "nope.x=1"], "unknown config section"),
])
def test_config_errors_are_one_line_exit_2(argv, fragment, synth, tmp_path, capsys):
    base = train_argv(synth["synth_topic"], tmp_path / "run", tmp_path / "no-backbone", tmp_path / "no-encoder")
    err = call([*base, *argv], capsys, code=2).err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written or loaded


def test_missing_outputs_fail_validate_and_train_before_models_load(synth, tmp_path, capsys):
    data = tmp_path / "synth_topic"
    shutil.copytree(synth["synth_topic"], data)
    (data / "train_outputs.json").unlink()
    err = call(["data", "validate", str(data)], capsys, code=2).err
    assert "train_outputs.json" in err and "gold outputs" in err
    argv = train_argv(data, tmp_path / "run", tmp_path / "no-backbone", tmp_path / "no-encoder")
    err = call(argv, capsys, code=2).err
    assert "no gold outputs" in err and "no-backbone" not in err and "Traceback" not in err


def test_run_folder_lifecycle_and_eval_options(synth, tiny_llama_dir, tiny_bert_dir, tmp_path, capsys):
    data, run = synth["synth_topic"], tmp_path / "run"
    call(train_argv(data, run, tiny_llama_dir, tiny_bert_dir), capsys)
    assert not (run / "checkpoint").exists()  # a finished run keeps no resume state
    modes = {stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert len(modes) == 1, modes  # weights get the same mode as every other file

    kept = tmp_path / "kept"
    call(train_argv(data, kept, tiny_llama_dir, tiny_bert_dir, "--keep-checkpoint"), capsys)
    state = torch.load(kept / "checkpoint" / "last.pt", weights_only=True)  # no pickled objects
    assert state["result"]["steps"] == 1
    call(train_argv(data, kept, tiny_llama_dir, tiny_bert_dir, "--resume", "--keep-checkpoint"), capsys)

    res = call(["eval", "--run", str(run), "--data", str(data), "--limit", "3", "--set", "decode.batch_size=1"], capsys)
    assert "pplug predict" in res.err and ("q/s" in res.err or "s/q" in res.err)  # a bar with rate and ETA
    res = call(["eval", "--run", str(run), "--data", str(data), "--limit", "2", "--no-swap-history",
                "--set", "decode.classify=generate", "--set", "decode.batch_size=1", "--quiet"], capsys)
    report = json.loads(res.out)
    assert "pplug predict" not in res.err
    assert report["overrides"] == ["decode.classify=generate", "decode.batch_size=1"] and report["questions"] == 2
    assert json.loads((run / "config.json").read_text())["decode"]["classify"] == "rank"  # not persisted
    err = call(["eval", "--run", str(run), "--data", str(data), "--set", "train.epochs=3"], capsys, code=2).err
    assert "after training" in err

    unlabeled = tmp_path / "unlabeled" / "synth_topic"
    shutil.copytree(data, unlabeled)
    (unlabeled / "test_outputs.json").unlink()
    err = call(["eval", "--run", str(run), "--data", str(unlabeled)], capsys, code=2).err
    assert "no gold outputs" in err and "pplug predict" in err
    out = call(["predict", "--run", str(run), "--data", str(unlabeled), "--out", str(tmp_path / "p.json")], capsys)
    assert json.loads(out.out)["questions"] == 4

    (run / "model.safetensors").unlink()
    err = call(["eval", "--run", str(run), "--data", str(data)], capsys, code=2).err
    assert "model.safetensors: weights not found" in err and "Traceback" not in err


def test_serve_checks_the_run_before_printing_a_url(tmp_path, capsys):
    res = call(["serve", "--run", str(tmp_path / "nope"), "--port", "0"], capsys, code=2)
    assert "run folder not found" in res.err and "url" not in res.out


def test_quiet_turns_progress_off():
    from pplug.progress import enabled

    assert enabled()
    try:
        main(["--quiet", "methods"])
    except SystemExit:
        pass
    assert not enabled()
