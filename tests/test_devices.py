"""Devices and precision: device names resolve or fail in one line, dtypes are checked per device, and every
tensor of a PPlug step follows the configured device and dtype (bfloat16 on CPU, watched with hooks)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from cli_helpers import run
from pplug.config import ConfigError, RunConfig, config_from_spec
from pplug.data import load_split
from pplug.devices import (
    DeviceError,
    autocast,
    check_dtype,
    device_problem,
    dtype_fields,
    resolve_device,
    torch_dtype,
)
from pplug.methods.pplug import Example, PPlugMethod
from pplug.resources import Resources
from pplug.runner import runtime_config, train_run
from pplug.synth import SynthConfig, synthesize

NO_CUDA = not torch.cuda.is_available()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cfg = SynthConfig(n_train_users=3, n_dev_users=1, n_test_users=1, min_profile=3, max_profile=5)
    return synthesize(tmp_path_factory.mktemp("synth"), cfg)


def test_device_spellings():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert device_problem(ok) is None, ok
    for bad in ("gpu", "cuda:x", "cpu:0", "auto:1", "CUDA", ""):
        assert "is not a device" in device_problem(bad), bad


@pytest.mark.skipif(not NO_CUDA or torch.backends.mps.is_available(), reason="needs a machine with no GPU")
def test_auto_is_cpu_without_a_gpu_and_cuda_fails_in_one_line():
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(DeviceError) as e:
            resolve_device(name)
        assert str(e.value).startswith(f"device: '{name}' was asked for") and "\n" not in str(e.value)
    with pytest.raises(DeviceError, match="device: 'gpu' is not a device"):
        resolve_device("gpu")


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_resolves_to_an_indexed_device():
    assert resolve_device("cuda") == torch.device("cuda", 0) == resolve_device("auto")
    with pytest.raises(DeviceError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_dtype_checks_name_the_field():
    assert check_dtype(CPU, "bfloat16", "backbone.dtype") is torch.bfloat16
    with pytest.raises(DeviceError, match=r"^encoder.dtype: float16 is not supported on cpu; use bfloat16"):
        check_dtype(CPU, "float16", "encoder.dtype")
    with pytest.raises(DeviceError, match="unknown dtype 'int8'"):
        torch_dtype("int8")
    assert dtype_fields("float16") == {"backbone.dtype": "float16", "encoder.dtype": "float16",
                                       "plug.dtype": "float32"}  # no float16 training without loss scaling
    assert dtype_fields("bfloat16")["plug.dtype"] == "bfloat16"


def test_autocast_only_below_float32():
    layer = torch.nn.Linear(4, 4)
    with autocast(CPU, "bfloat16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(CPU, "float32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_config_rules_refuse_bad_devices_and_dtypes():
    assert config_from_spec("pplug", "d", ["device=cuda:1"]).device == "cuda:1"
    assert RunConfig().device == "auto"
    with pytest.raises(ConfigError, match=r"^device: 'gpu' is not a device"):
        config_from_spec("pplug", "d", ["device=gpu"])
    with pytest.raises(ConfigError, match=r"^plug.dtype: 'float16' is not one of"):
        config_from_spec("pplug", "d", ["plug.dtype=float16"])
    with pytest.raises(ConfigError, match=r"^encoder.dtype: 'half' is not one of"):
        config_from_spec("pplug", "d", ["encoder.dtype=half"])


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_one_line_exit_2(synth, tmp_path, capsys, tiny_llama_dir, tiny_bert_dir):
    out = tmp_path / "run"
    code = run(["train", "--method", "pplug", "--data", str(synth["synth_topic"]), "--out", str(out),
                "--backbone", str(tiny_llama_dir), "--encoder", str(tiny_bert_dir), "--device", "cuda", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: device: 'cuda' was asked for") and "\n" not in err
    assert not out.exists()  # refused before the run folder is written
    code = run(["train", "--method", "pplug", "--data", str(synth["synth_topic"]), "--out", str(out),
                "--backbone", str(tiny_llama_dir), "--dtype", "float16", "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: backbone.dtype: float16 is not supported on cpu")
    code = run(["bench", "--data", str(synth["synth_topic"]), "--out", str(tmp_path / "bench"), "--device", "cuda"])
    assert code == 2 and "error: device: 'cuda' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def _config(data, backbone_dir, encoder_dir, dtype: str) -> RunConfig:
    cfg = RunConfig(method="pplug", data=str(data), task="synth_topic", device="cpu")
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(backbone_dir), str(encoder_dir)
    cfg.backbone.dtype = cfg.encoder.dtype = cfg.plug.dtype = dtype
    cfg.plug.n_persona_tokens, cfg.decode.max_new_tokens = 2, 3
    cfg.plug.train_input_encoder = True  # the trained input encoder's autocast path is checked too
    return cfg


def _watch(modules: dict[str, torch.nn.Module]) -> tuple[list[tuple[str, torch.Tensor]], list]:
    """Record every floating tensor output of every nn.Linear / nn.Embedding under ``modules`` (``where`` ends in
    ``:Linear`` or ``:Embedding``)."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for prefix, root in modules.items():
        for name, mod in root.named_modules():
            if isinstance(mod, torch.nn.Linear | torch.nn.Embedding):
                def hook(_m, _inp, out, where=f"{prefix}.{name}:{type(mod).__name__}"):
                    if isinstance(out, torch.Tensor) and out.is_floating_point():
                        seen.append((where, out.detach()))
                handles.append(mod.register_forward_hook(hook))
    return seen, handles


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_every_tensor_follows_the_configured_device_and_dtype(synth, tiny_backbone_dir, tiny_bert_dir, dtype):
    want = torch_dtype(dtype)
    method = PPlugMethod(_config(synth["synth_topic"], tiny_backbone_dir, tiny_bert_dir, dtype), Resources(None))
    assert method.device == CPU
    # storage: the frozen parts in the configured dtype, the trained parts keep float32 master weights
    assert {p.dtype for p in method.backbone.model.parameters()} == {want}
    assert {p.dtype for p in method.history_encoder.encoder.parameters()} == {want}
    assert {p.dtype for p in method.trainable.parameters()} == {torch.float32}
    modules = {"backbone": method.backbone.model, "history_encoder": method.history_encoder.encoder,
               "input_encoder": method.input_encoder, "plug": method.plug}
    seen, handles = _watch(modules)
    try:
        train = load_split(method.config.data, "train")
        method.prime(train.questions[:3])  # history vectors encoded here (cached afterwards)
        loss = method._loss([Example(q, train.gold(q)) for q in train.questions[:3]])
        loss.backward()
        preds = method.predict(train.questions[:2])
    finally:
        for h in handles:
            h.remove()
    assert {where.split(".")[0] for where, _ in seen} == set(modules)  # every part ran

    def expected(where: str) -> torch.dtype:  # a trained part's embedding lookup reads its float32 master weights;
        trained = where.startswith(("input_encoder", "plug"))  # autocast computes its matmuls (Linear) in `want`
        return torch.float32 if trained and where.endswith(":Embedding") else want

    wrong = sorted({where for where, t in seen if t.dtype != expected(where) or t.device != method.device})
    assert not wrong, f"outputs not in {want} on {method.device}: {wrong[:5]}"
    assert all(p.grad is not None for p in method.plug.parameters() if p.requires_grad)
    grads = [p.grad for p in method.trainable.parameters() if p.grad is not None]  # (BERT's pooler is unused)
    assert len(grads) > len(list(method.plug.parameters()))  # the input encoder got gradients too
    assert all(g.dtype == torch.float32 and g.device == CPU for g in grads)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert len(preds) == 2 and all(isinstance(p.output, str) for p in preds)


def test_predict_time_device_and_dtype_overrides(synth, tiny_llama_dir, tiny_bert_dir, tmp_path, capsys):
    cfg = _config(synth["synth_topic"], tiny_llama_dir, tiny_bert_dir, "float32")
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.select_on_dev = 1, False, 0, False
    train_run(cfg, tmp_path / "run", Resources(None))
    got = runtime_config(tmp_path / "run", overrides=["device=cpu", "backbone.dtype=bfloat16", "plug.dtype=bfloat16"])
    assert (got.device, got.backbone.dtype, got.plug.dtype) == ("cpu", "bfloat16", "bfloat16")
    with pytest.raises(Exception, match="can change after training"):
        runtime_config(tmp_path / "run", overrides=["train.lr=0.1"])
    with pytest.raises(DeviceError, match="float16 is not supported on cpu"):
        runtime_config(tmp_path / "run", overrides=["backbone.dtype=float16"])
    if NO_CUDA:  # eval and serve refuse a missing GPU in one line, before loading models or binding a port
        for argv in (["eval", "--run", str(tmp_path / "run"), "--data", cfg.data, "--device", "cuda"],
                     ["serve", "--run", str(tmp_path / "run"), "--port", "0", "--device", "cuda"]):
            code = run(argv)
            captured = capsys.readouterr()
            assert code == 2 and "error: device: 'cuda' was asked for" in captured.err and "url" not in captured.out


# ---- no hard-coded device: every tensor factory in src/pplug names its device, or is CPU by design ----------
FACTORIES = {"tensor", "zeros", "ones", "full", "arange", "empty", "randn", "rand", "as_tensor", "eye", "linspace"}
CPU_BY_DESIGN = {  # (file, function) -> why a CPU tensor is right there
    ("encoders.py", "encode"): "encode() returns float32 on CPU (the embedding cache's format)",
    ("embedding_cache.py", "encode"): "cached vectors are CPU float32; callers move them",
    ("methods/pplug.py", "item_vectors"): "history vectors on CPU, like the cache (the server stores them)",
    ("label_prior.py", "prior_log_probs"): "a [L] prior from counts; combine() moves it to the scores",
    ("label_prior.py", "choose_labels"): "offline tuning over stored float scores",
    ("label_prior.py", "shift_vector"): "a [L] log marginal from stored floats; combine() moves it to the scores",
    ("vocab_prior.py", "user_bias"): "a [V] bias from token counts; VocabBias moves it to the scores",
    ("plug.py", "__init__"): "parameters and buffers: the module is moved with .to(device)",
    ("server/runtime.py", "profile_tensor"): "stored vectors on CPU, moved by PPlugMethod._history",
    ("backbones/base.py", "_option_ids"): "row values copied into a tensor already on the device",
}


def _factory_calls_without_device(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and node.func.attr in FACTORIES):
                continue
            if any(k.arg == "device" or k.arg is None for k in node.keywords):  # device= or **as_long
                continue
            up = parents.get(node)
            if isinstance(up, ast.Attribute) and up.attr == "to":  # torch.tensor(...).to(x.device)
                continue
            func = up
            while func is not None and not isinstance(func, ast.FunctionDef):
                func = parents.get(func)
            rel = path.relative_to(root).as_posix()
            if (rel, func.name if func else "") not in CPU_BY_DESIGN:
                found.append(f"{rel}:{node.lineno} torch.{node.func.attr} in {func.name if func else '<module>'}")
    return found


def test_no_tensor_factory_without_a_device():
    src = Path(__file__).resolve().parents[1] / "src" / "pplug"
    assert _factory_calls_without_device(src) == []


def test_the_scanner_finds_a_hard_coded_cpu_tensor(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\n\ndef f(x):\n    return x + torch.zeros(3)\n")
    assert _factory_calls_without_device(tmp_path) == ["bad.py:4 torch.zeros in f"]
