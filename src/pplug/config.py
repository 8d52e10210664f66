"""The run config: one typed dataclass per concern, resolved once and saved beside every run's weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from pplug.backbones import BackboneConfig
from pplug.encoders import EncoderConfig
from pplug.errors import PPlugError
from pplug.plug import PlugConfig
from pplug.training import TrainConfig


@dataclass
class DecodeConfig:
    max_new_tokens: int | None = None  # None = per task kind: classification 8, rating 4, generation 32
    num_beams: int = 1  # 1 = greedy; the paper uses beam 4 (about 4x slower on CPU)
    batch_size: int = 8  # questions per generate call
    swap_history: bool = False  # diagnostic: give each question another user's history at prediction
    classify: str = "generate"  # classification/rating: "generate" then parse, or "rank" the labels by likelihood
    bucket: bool = True  # batch questions of similar prompt length (less padding); predictions keep input order

    def __post_init__(self) -> None:
        if self.classify not in ("generate", "rank"):
            raise ValueError(f"decode.classify must be 'generate' or 'rank', got '{self.classify}'")

    def new_tokens(self, kind: str) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return {"classification": 8, "rating": 4}.get(kind, 32)


@dataclass
class RetrievalConfig:
    retriever: str = "bm25"  # bm25 | dense | recency
    k: int = 4  # retrieved history items in the prompt
    item_tokens: int = 384  # token budget shared by the retrieved items (each gets budget // k)


@dataclass
class LoraConfig:
    r: int = 8  # LoRA rank (OPPU: 8)
    alpha: int = 8  # LoRA alpha (OPPU: 8)
    dropout: float = 0.05  # LoRA dropout
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "q", "v"])  # q/v (Llama + T5 names)
    user_epochs: int = 2  # OPPU: epochs of each per-user adapter
    user_lr: float = 1e-4  # OPPU: per-user learning rate
    user_weight_decay: float = 0.01  # OPPU: per-user weight decay
    user_warmup: float = 0.1  # OPPU: per-user warmup share
    users: int | None = None  # OPPU: personalize only the first N test users (CPU cost); others use the task LoRA


@dataclass
class RunConfig:
    method: str = "pplug"  # a registered method (pplug list-methods)
    task: str = ""  # registered task name (resolved from the data folder)
    data: str = ""  # the training data folder
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    plug: PlugConfig = field(default_factory=PlugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise PPlugError(f"{path}: run config not found (is this a run folder made by `pplug train`?)")
        return from_dict(cls, json.loads(path.read_text()))


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) dataclass from a dict; unknown keys are an error naming the key."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise PPlugError(f"unknown config field '{cls.__name__}.{key}'")
        sub = hints[key]
        kwargs[key] = from_dict(sub, value) if is_dataclass(sub) and isinstance(value, dict) else value
    return cls(**kwargs)


def apply_override(config: RunConfig, assignment: str) -> None:
    """Set ``section.field=value`` (value parsed as JSON, else kept as a string)."""
    if "=" not in assignment:
        raise PPlugError(f"--set expects section.field=value, got '{assignment}'")
    path, raw = assignment.split("=", 1)
    parts = path.strip().split(".")
    target: Any = config
    for p in parts[:-1]:
        if not hasattr(target, p) or not is_dataclass(getattr(target, p)):
            raise PPlugError(f"--set {path}: unknown config section '{p}'")
        target = getattr(target, p)
    if not hasattr(target, parts[-1]):
        raise PPlugError(f"--set {path}: unknown field '{parts[-1]}' in {type(target).__name__}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    setattr(target, parts[-1], value)


def config_from_spec(spec: str, data: str, overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from a method spec ``name[:variant][@section.field=value,...]``.

    ``variant`` is a PPlug ablation (``pplug:no_persona``) or ``swap_history``; the ``@`` part sets
    fields for this method only (e.g. ``pplug@plug.n_persona_tokens=4``); ``overrides`` apply first.
    """
    from pplug.plug import ABLATIONS

    head, _, sets = spec.partition("@")
    name, _, variant = head.partition(":")
    cfg = RunConfig(method=name, data=str(data))
    if variant in ABLATIONS:
        cfg.plug.ablation = variant
    elif variant == "swap_history":
        cfg.decode.swap_history = True
    elif variant:
        raise PPlugError(f"unknown variant '{variant}' in '{spec}': use one of {ABLATIONS + ('swap_history',)}")
    for o in [*(overrides or []), *(s for s in sets.split(",") if s)]:
        apply_override(cfg, o)
    cfg.plug.__post_init__()
    cfg.decode.__post_init__()
    return cfg
