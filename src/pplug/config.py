"""The run config: one typed dataclass per concern, resolved once and saved beside every run's weights."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from pplug.backbones import BackboneConfig
from pplug.devices import DTYPES, TRAINABLE_DTYPES, device_problem
from pplug.encoders import EncoderConfig
from pplug.errors import PPlugError
from pplug.plug import ABLATIONS, PLACEMENTS, PlugConfig
from pplug.retrieval import RETRIEVERS
from pplug.training import TrainConfig


class ConfigError(PPlugError):
    """A config field has a value of the wrong type or out of range; the message names the field."""


@dataclass
class DecodeConfig:
    max_new_tokens: int | None = None  # None = per task kind: classification 8, rating 4, generation 32
    num_beams: int = 1  # 1 = greedy; the paper uses beam 4 (about 4x slower on CPU)
    batch_size: int = 8  # questions per generate call
    swap_history: bool = False  # diagnostic: give each question another user's history at prediction
    classify: str = "rank"  # classification/rating: "rank" the labels by likelihood, or "generate" then parse
    label_prior: float | str | None = None  # rank decoding: weight of the user's label prior (0 = LLM alone;
    # "auto" = chosen on dev after training; None = per task kind and method, pplug/kind_defaults.py)
    prior_smoothing: float = 1.0  # Dirichlet smoothing of the user's label counts in the prior
    label_shift: float | str | None = None  # rank decoding: weight of the LLM's own label marginal divided out
    # (1 = Bayes' prior shift to the user's prior; "auto" = chosen on dev with label_prior; None = per kind)
    label_marginal: dict[str, float] | None = None  # label -> log of the LLM's mean probability on dev (set by
    # "auto" tuning; label_shift needs it)
    vocab_prior: float | str | None = None  # generation: weight of the user's vocabulary bias (PMI of her past
    # outputs' tokens; 0 = LLM alone; "auto" = chosen on dev after training; None = per kind, pplug/vocab_prior.py)
    bucket: bool = True  # batch questions of similar prompt length (less padding); predictions keep input order
    tune_limit: int | None = 96  # "auto" weights (label prior/shift, vocabulary prior) are chosen on the first N dev
    # questions (None = all); predictions only, so more than train.dev_limit's epoch selection (README "tune_limit")

    def new_tokens(self, kind: str) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return {"classification": 8, "rating": 4}.get(kind, 32)


RETRIEVAL_SHOWS = ("example", "output")


@dataclass
class RetrievalConfig:
    retriever: str = "bm25"  # bm25 | dense | recency
    k: int = 4  # retrieved history items in the prompt
    item_tokens: int = 384  # token budget shared by the retrieved items (each gets budget // k)
    show: str = "example"  # how a retrieved item is shown: example (its input and output, LaMP's format) |
    # output (only the user's own past output: her title, headline, label; short prompts)


LORA_METHODS = ("task-lora", "task-lora-rag", "oppu", "oppu-rag")  # the methods whose training reads `lora`
TRAINED_METHODS = ("pplug", "pplug-rag", *LORA_METHODS)  # the methods `train` optimizes (train.processes > 1)


@dataclass
class LoraConfig:
    """The LoRA methods' adapters and optimization, with the defaults of OPPU's code (task_LoRA.py, OPPU.py).

    The task stage (``task-lora``, OPPU's first stage) trains with ``task_*``, each per-user adapter
    with ``user_*``; PPlug's ``train.epochs/lr/weight_decay/warmup/clip`` do not apply to them (``train``
    still gives batch size, grad_accum, max_steps, limits, dev selection and seed).
    """

    r: int = 8  # LoRA rank of both stages (OPPU: 8)
    alpha: int = 8  # LoRA alpha (OPPU: 8)
    dropout: float = 0.05  # LoRA dropout
    task_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "q", "k", "v"])
    # ^ task stage: q/k/v (OPPU task_LoRA.py; Llama + T5 names)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "q", "v"])  # per-user: q/v (OPPU)
    task_epochs: int = 3  # task stage epochs (OPPU: 3)
    task_lr: float = 1e-3  # task stage peak lr, linear warmup then decay (OPPU: 1e-4; 1e-3 measured better on
    # news_categorize dev with this 135M backbone: .487 vs .385 after 1 epoch, README "Fidelity")
    task_weight_decay: float = 0.01  # task stage AdamW weight decay (OPPU: 0.01)
    task_warmup: float = 0.1  # task stage warmup share (OPPU: 0.1)
    task_clip: float = 0.3  # task stage max grad norm (OPPU: 0.3)
    user_epochs: int = 2  # OPPU: epochs of each per-user adapter
    user_lr: float = 1e-4  # OPPU: per-user learning rate
    user_weight_decay: float = 0.01  # OPPU: per-user weight decay
    user_warmup: float = 0.1  # OPPU: per-user warmup share
    user_clip: float = 0.3  # OPPU: per-user max grad norm
    users: int | None = None  # OPPU: personalize only the first N test users (CPU cost); others use the task LoRA


@dataclass
class RunConfig:
    method: str = "pplug"  # a registered method (pplug list-methods)
    task: str = ""  # registered task name (resolved from the data folder)
    data: str = ""  # the training data folder
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps; see pplug.devices
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    plug: PlugConfig = field(default_factory=PlugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """``{"section.field": value}`` (and ``{"method": ...}`` for the top-level fields); see `flatten`."""
        return flatten(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise PPlugError(f"{path}: run config not found (is this a run folder made by `pplug train`?)")
        try:
            return validate(from_dict(cls, json.loads(path.read_text())))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """A (saved) run config dict as ``{"section.field": value}``; top-level fields keep their own name."""
    flat: dict[str, Any] = {}
    for section, value in config.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for name, v in items:
            flat[section if name is None else f"{section}.{name}"] = v
    return flat


def config_file(path: str | Path) -> RunConfig:
    """A RunConfig from a JSON file (a recipe such as ``recipes/paper-lamp.json``, or a run's ``config.json``):
    fields left out keep their defaults.

    Raises:
        ConfigError: the file is missing, is not a JSON object, or has an unknown or invalid field (named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a JSON object of sections, got {type(data).__name__}")
    try:
        return validate(from_dict(RunConfig, data))
    except (PPlugError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


# ---- validation: types from the dataclasses' annotations, values from the rules below ------------------
Check = Callable[[Any], "str | None"]  # a value -> None when valid, else what is wrong with it


def one_of(*options: Any) -> Check:
    return lambda v: None if v in options else f"{v!r} is not one of {list(options)}"


def at_least(low: float) -> Check:
    return lambda v: None if v is None or v >= low else f"{v!r} is below the minimum {low}"


def above(low: float) -> Check:
    return lambda v: None if v is None or v > low else f"{v!r} must be greater than {low}"


def between(low: float, high: float) -> Check:
    return lambda v: None if v is None or low <= v <= high else f"{v!r} is outside [{low}, {high}]"


def prior_weight(v: Any) -> str | None:
    if v is None or v == "auto" or (not isinstance(v, str) and v >= 0):
        return None
    return f"{v!r} must be a number >= 0 or 'auto'"


def non_empty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


RULES: dict[str, dict[str, Check]] = {  # section -> field -> rule ("run": RunConfig's own fields); all type-checked
    "run": {"device": device_problem},
    "backbone": {"name_or_path": non_empty, "max_prompt_tokens": at_least(1), "max_target_tokens": at_least(1),
                 "dtype": one_of(*DTYPES)},
    "encoder": {"name_or_path": non_empty, "max_length": at_least(1), "batch_size": at_least(1),
                "pooling": one_of(None, "mean", "cls"), "dtype": one_of(*DTYPES)},
    "plug": {"n_persona_tokens": at_least(1), "ablation": one_of(*ABLATIONS), "placement": one_of(None, *PLACEMENTS),
             "top_k": at_least(1), "temperature": above(0), "gain_init": above(0), "max_history": at_least(0),
             "dtype": one_of(*TRAINABLE_DTYPES), "center_momentum": between(0, 1)},
    "train": {"epochs": at_least(1), "lr": above(0), "weight_decay": at_least(0), "warmup": between(0, 1),
              "batch_size": at_least(1), "grad_accum": at_least(1), "clip": at_least(0), "max_steps": at_least(1),
              "limit": at_least(0), "dev_limit": at_least(0), "augment_copies": at_least(0),
              "augment_max_drop": between(0.01, 1), "swap_contrast": at_least(0), "swap_margin": at_least(0),
              "processes": at_least(1)},
    "decode": {"max_new_tokens": at_least(1), "num_beams": at_least(1), "batch_size": at_least(1),
               "classify": one_of("generate", "rank"), "label_prior": prior_weight,
               "prior_smoothing": at_least(0), "label_shift": prior_weight,
               "vocab_prior": prior_weight, "tune_limit": at_least(1)},
    "retrieval": {"retriever": one_of(*RETRIEVERS), "k": at_least(0), "item_tokens": at_least(1),
                  "show": one_of(*RETRIEVAL_SHOWS)},
    "lora": {"r": at_least(1), "alpha": above(0), "dropout": between(0, 1), "task_target_modules": non_empty,
             "target_modules": non_empty, "task_epochs": at_least(1), "task_lr": above(0),
             "task_weight_decay": at_least(0), "task_warmup": between(0, 1), "task_clip": at_least(0),
             "user_epochs": at_least(1), "user_lr": above(0), "user_weight_decay": at_least(0),
             "user_warmup": between(0, 1), "user_clip": at_least(0), "users": at_least(0)},
}


def type_error(value: Any, hint: Any) -> str | None:
    """None when ``value`` fits the annotation ``hint`` (int, float, bool, str, X | None, list[X]), else why not."""
    if hint is Any:
        return None
    if get_origin(hint) in (Union, UnionType):
        errors = [type_error(value, h) for h in get_args(hint)]
        return None if None in errors else errors[0]
    if hint is type(None):
        return None if value is None else f"{value!r} is not null"
    if get_origin(hint) is dict:
        key, item = get_args(hint) or (Any, Any)
        if not isinstance(value, dict) or any(type_error(k, key) or type_error(v, item) for k, v in value.items()):
            return f"{value!r} is not a mapping of {getattr(key, '__name__', key)} to {getattr(item, '__name__', item)}"
        return None
    if get_origin(hint) is list:
        (item,) = get_args(hint) or (Any,)
        if not isinstance(value, list) or any(type_error(v, item) for v in value):
            return f"{value!r} is not a list of {getattr(item, '__name__', item)}"
        return None
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}.get(hint, lambda v: isinstance(v, hint))
    article = "an" if hint.__name__[0] in "aeiou" else "a"
    return None if ok(value) else f"{value!r} is not {article} {hint.__name__}"


def validate(config: RunConfig) -> RunConfig:
    """Check every field's type and every rule of `RULES`; the error names the field.

    Raises:
        ConfigError: e.g. ``decode.classify: 'rnak' is not one of ['generate', 'rank']``.
    """
    top = get_type_hints(RunConfig)
    for f in fields(config):
        section = getattr(config, f.name)
        if not is_dataclass(section):  # method, task, data, device
            problem = type_error(section, top[f.name])
            if problem is None and f.name in RULES["run"]:
                problem = RULES["run"][f.name](section)
            if problem:
                raise ConfigError(f"{f.name}: {problem}")
            continue
        hints, rules = get_type_hints(type(section)), RULES.get(f.name, {})
        for sub in fields(section):
            value = getattr(section, sub.name)
            problem = type_error(value, hints[sub.name])
            if problem is None and sub.name in rules:
                problem = rules[sub.name](value)
            if problem:
                raise ConfigError(f"{f.name}.{sub.name}: {problem}")
    if config.train.processes > 1 and config.method not in TRAINED_METHODS:
        raise ConfigError(f"train.processes: {config.method} trains nothing to run on {config.train.processes} "
                          f"processes; multi-process training supports {', '.join(TRAINED_METHODS)}")
    return config


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
    setattr(target, parts[-1], parse_value(raw, get_type_hints(type(target)).get(parts[-1], Any)))


def parse_value(raw: str, hint: Any) -> Any:
    """An override's value: JSON (``4``, ``1e-4``, ``null``, ``true``, ``["q", "v"]``), else the raw text; a
    ``str`` field keeps the raw text, an int fills a ``float`` field, ``a,b`` fills a ``list[str]`` field."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    allowed = set(get_args(hint)) if get_origin(hint) in (Union, UnionType) else {hint}
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if str in allowed and not isinstance(value, str) and value is not None and not (numeric and float in allowed):
        return raw  # a text field keeps the raw text (a `float | str` field takes numbers as numbers)
    if float in allowed and int not in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if list[str] in allowed and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def config_from_spec(spec: str, data: str, overrides: list[str] | None = None,
                     base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from a method spec ``name[:variant][@section.field=value,...]``.

    ``variant`` is a PPlug ablation (``pplug:no_persona``) or ``swap_history``; the ``@`` part sets
    fields for this method only (e.g. ``pplug@plug.n_persona_tokens=4``); ``overrides`` apply first.
    ``base`` (e.g. a `config_file` recipe) gives the other fields; it is changed in place.
    """
    head, _, sets = spec.partition("@")
    name, _, variant = head.partition(":")
    cfg = base if base is not None else RunConfig()
    cfg.method, cfg.data = name, str(data)
    if variant in ABLATIONS:
        cfg.plug.ablation = variant
    elif variant == "swap_history":
        cfg.decode.swap_history = True
    elif variant:
        raise PPlugError(f"unknown variant '{variant}' in '{spec}': use one of {ABLATIONS + ('swap_history',)}")
    for o in [*(overrides or []), *(s for s in sets.split(",") if s)]:
        apply_override(cfg, o)
    return validate(cfg)
