"""Data-parallel training (pplug.distributed): 2 processes on gloo land where 1 process lands at the same global
batch; only rank 0 writes the run folder; launcher variables are honoured; bad requests fail in one line.

Tolerance: both runs see the same micro-batches, and each gradient is the same sum of the same per-micro-batch
gradients, only added in another order (with 2 micro-batches per rank, rank 0 adds a + c, rank 1 b + d and
DDP's all-reduce adds the two; one process adds a, b, c, d in turn). Float32 addition in another order moves a
gradient by ~1e-7 relative; AdamW's update (lr x m / sqrt(v)) carries that relative error, so after a handful of
steps at lr 1e-3 the weights may differ by ~1e-10..1e-6 (measured: 1.9e-8 for PPlug at 2 micro-batches per
rank; exactly 0 for task-lora at 1, where the order cannot differ). ``ATOL = 1e-5`` is ten times the bound and
still 100 times below one step's update (~lr = 1e-3), so a missing gradient sync, a wrong loss scale or a wrong
shard (each moves the weights by ~lr) fails, as the run at another global batch in the first test shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run
from pplug.config import RunConfig
from pplug.errors import PPlugError
from pplug.synth import SynthConfig, synthesize

ATOL = 1e-5  # see the module docstring
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def topic(tmp_path_factory):
    """9 train questions (3 users x 3): with batch 2 the last step of an epoch has 1 micro-batch for 2 ranks."""
    cfg = SynthConfig(n_train_users=3, n_dev_users=2, n_test_users=1, min_profile=3, max_profile=4)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)["synth_topic"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Every process (spawned workers inherit the environment) shares one fresh embedding cache."""
    monkeypatch.setenv("PPLUG_CACHE", str(tmp_path_factory.getbasetemp() / "mp-cache"))
    yield
    from pplug.progress import set_quiet

    set_quiet(False)


def argv(method, data, out, backbone, encoder, *extra):
    return ["--quiet", "train", "--method", method, "--data", str(data), "--out", str(out), "--epochs", "2",
            "--lr", "1e-3", "--batch-size", "2", "--augment-copies", "0", "--dev-limit", "3",
            "--backbone", str(backbone), "--encoder", str(encoder), "--set", "decode.max_new_tokens=2", *extra]


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_run(one: Path, two: Path, weights: str, steps: int, global_batch: int) -> None:
    a, b = load_file(str(one / weights)), load_file(str(two / weights))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=ATOL), (k, (a[k] - b[k]).abs().max().item())
    ra, rb = (json.loads((d / "train_report.json").read_text()) for d in (one, two))
    assert ra["steps"] == rb["steps"] == steps  # 5 micro-batches per epoch: the last step is short
    assert (ra["best_epoch"], ra["best_dev"]) == (rb["best_epoch"], rb["best_dev"])  # dev metric on 3 questions
    for ea, eb in zip(ra["history"], rb["history"], strict=True):
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-5)  # the loss of all ranks, averaged
        assert ea.get("dev_score") == eb.get("dev_score")
    assert rb["processes"] == 2 and rb["global_batch"] == global_batch and "processes" not in ra
    assert json.loads((two / "config.json").read_text())["train"]["processes"] == 2


def test_two_processes_match_one_process_pplug(topic, tmp_path, tiny_llama_dir, tiny_bert_dir):
    """--processes 2 at batch 2 x grad_accum 2 (global batch 8) == 1 process at batch 2 x grad_accum 4."""
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    extra = ["--persona-tokens", "2", "--frozen-input-encoder"]  # the tiny BERT has dropout: keep it frozen
    assert run(argv("pplug", topic, one, tiny_llama_dir, tiny_bert_dir, *extra, "--set", "train.grad_accum=4")) == 0
    assert run(argv("pplug", topic, two, tiny_llama_dir, tiny_bert_dir, *extra, "--set", "train.grad_accum=2",
                    "--processes", "2")) == 0
    assert_same_run(one, two, "model.safetensors", steps=4, global_batch=8)
    assert files(one) == files(two) == ["config.json", "model.safetensors", "task.json", "train_report.json"]
    # the tolerance can fail: at another global batch (4) the weights move apart by far more than ATOL
    assert run(argv("pplug", topic, other, tiny_llama_dir, tiny_bert_dir, *extra, "--set", "train.grad_accum=2")) == 0
    a, b = load_file(str(other / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 100 * ATOL


def test_torchrun_task_lora_matches_one_process_and_only_rank_0_writes(topic, tmp_path, tiny_llama_dir,
                                                                       tiny_bert_dir):
    """task-lora under `torchrun --nproc_per_node 2` (the launcher's variables) == 1 process at the same global
    batch; every write under the run folder comes from rank 0 (rank 1's writes are recorded by mp_watch.py)."""
    one, two, logs = tmp_path / "one", tmp_path / "two", tmp_path / "logs"
    logs.mkdir()
    extra = ["--set", "lora.dropout=0"]  # dropout draws other masks on each rank
    assert run(argv("task-lora", topic, one, tiny_llama_dir, tiny_bert_dir, *extra, "--set", "train.grad_accum=2")) == 0
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "mp_watch.py"), str(logs), str(two),
           *argv("task-lora", topic, two, tiny_llama_dir, tiny_bert_dir, *extra)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count('"steps"') == 1  # rank 0 alone printed the report
    assert_same_run(one, two, "task_lora/adapter_model.safetensors", steps=6, global_batch=4)
    assert files(one) == files(two)
    rank0, rank1 = (json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1))
    assert {"open", "save_file", "os.chmod"} <= {event for event, _ in rank0}  # the watch sees writes ...
    assert rank1 == []  # ... and rank 1 made none


@pytest.mark.parametrize("extra, fragment", [
    (["--method", "zero-shot", "--processes", "2"], "trains nothing"),
    (["--set", "train.processes=0"], "train.processes: 0"),
    (["--processes", "50"], "more processes than training questions (9)"),
])
def test_bad_process_counts_are_one_line_errors(extra, fragment, topic, tmp_path, capsys):
    base = argv("pplug", topic, tmp_path / "run", tmp_path / "no-backbone", tmp_path / "no-encoder")
    assert run([*base, *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) <= 4
    assert not (tmp_path / "run").exists()  # refused before any model loads or any file is written


def test_launcher_variables(topic, tmp_path, monkeypatch):
    from pplug import distributed
    from pplug.runner import train_run

    monkeypatch.setenv("PMI_RANK", "1")  # mpirun (accelerate launch --cpu --mpirun_hostfile)
    monkeypatch.setenv("PMI_SIZE", "3")
    assert distributed.launched() == distributed.World(1, 3) and not distributed.launched().main
    for name in ("PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: the launcher's count is checked before any group forms
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PPlugError, match="trains nothing"):
        train_run(RunConfig(method="zero-shot", data=str(topic)), tmp_path / "run")
    cfg = RunConfig(method="pplug", data=str(topic))
    cfg.train.processes = 3
    with pytest.raises(PPlugError, match="already one of 2 started by a launcher"):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # `accelerate launch --cpu --num_processes 2`: one process
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(PPlugError, match="started this process alone"):
        distributed.launched()
    with pytest.raises(PPlugError, match="not one of 2 launched together"):
        distributed.training_world(2)
