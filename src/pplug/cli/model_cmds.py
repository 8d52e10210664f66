"""``pplug train|predict|eval|demo|methods``: the model commands. Flags map onto RunConfig fields;
``--set section.field=value`` reaches any other field (see ``pplug.config``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pplug.cli.options import DeviceOpt, DtypeOpt, QuietOpt, apply_quiet, default_of, device_overrides
from pplug.kind_defaults import per_kind_help

Opt = typer.Option


def build_config(method: str | None, data: Path | None, task: str | None, backbone: str | None,
                 encoder: str | None, epochs: int | None, lr: float | None, batch_size: int | None,
                 max_steps: int | None, train_limit: int | None, dev_limit: int | None, seed: int | None,
                 persona_tokens: int | None, augment_copies: int | None, class_balanced: bool | None,
                 train_input_encoder: bool | None, k: int | None, retriever: str | None, users: int | None,
                 overrides: list[str] | None, config_path: Path | None = None, device: str | None = None,
                 dtype: str | None = None, processes: int | None = None):
    """A RunConfig from CLI flags (``method`` is a spec: ``pplug:no_persona``, ``pplug@plug.top_k=2``).

    Precedence: defaults < ``config_path`` (a JSON recipe) < flags < ``--device``/``--dtype`` < ``--set``.
    ``--epochs``/``--lr`` set ``train.*`` for PPlug and ``lora.task_*`` for the LoRA methods.

    Raises:
        PPlugError: an unknown method/field or a value the config refuses (one line, exit 2).
    """
    from pplug.cli.options import device_overrides
    from pplug.config import LORA_METHODS, apply_override, config_file, config_from_spec, validate
    from pplug.errors import PPlugError

    try:
        base = config_file(config_path) if config_path is not None else None
        spec = method or (base.method if base is not None else None)
        data = data or (Path(base.data) if base is not None and base.data else None)
        if not spec or data is None:
            raise PPlugError(f"train: give --{'method' if not spec else 'data'} (or set it in a --config file)")
        cfg = config_from_spec(spec, str(data), base=base)
        cfg.task = task or cfg.task
        optim, prefix = (cfg.lora, "task_") if cfg.method in LORA_METHODS else (cfg.train, "")
        pairs = [(cfg.backbone, "name_or_path", backbone), (cfg.encoder, "name_or_path", encoder),
                 (optim, f"{prefix}epochs", epochs), (optim, f"{prefix}lr", lr), (cfg.train, "batch_size", batch_size),
                 (cfg.train, "max_steps", max_steps), (cfg.train, "limit", train_limit),
                 (cfg.train, "dev_limit", dev_limit), (cfg.train, "seed", seed),
                 (cfg.plug, "n_persona_tokens", persona_tokens), (cfg.train, "augment_copies", augment_copies),
                 (cfg.train, "class_balanced", class_balanced), (cfg.plug, "train_input_encoder", train_input_encoder),
                 (cfg.retrieval, "k", k), (cfg.retrieval, "retriever", retriever), (cfg.lora, "users", users),
                 (cfg.train, "processes", processes)]
        for section, field, value in pairs:
            if value is not None:
                setattr(section, field, value)
        for o in [*device_overrides(device, dtype), *(overrides or [])]:
            apply_override(cfg, o)
        return validate(cfg)
    except (ValueError, TypeError) as e:  # a dataclass check the config layer did not phrase as a PPlugError
        raise PPlugError(f"config: {e}") from e


def _d(section: str, name: str) -> str:
    """``--help`` default of a config field (flags left unset keep the config default)."""
    from pplug.backbones import BackboneConfig
    from pplug.config import LoraConfig, RetrievalConfig
    from pplug.encoders import EncoderConfig
    from pplug.plug import PlugConfig
    from pplug.training import TrainConfig

    classes = {"train": TrainConfig, "plug": PlugConfig, "retrieval": RetrievalConfig, "lora": LoraConfig,
               "backbone": BackboneConfig, "encoder": EncoderConfig}
    return default_of(classes[section], name)


def train(
    out: Annotated[Path, Opt(help="Run folder to write (config, trainable weights, reports).")],
    method: Annotated[str | None, Opt(help="Method, optionally with a variant: pplug, pplug:no_persona, rag-bm25, "
                                           "... (`pplug methods`). Required unless --config names it.")] = None,
    data: Annotated[Path | None, Opt(help="Data folder (LaMP or JSONL layout) with train (and dev) splits. "
                                          "Required unless --config names it.")] = None,
    config: Annotated[Path | None, Opt("--config", help="A JSON run config to start from (e.g. "
                                                        "recipes/paper-lamp.json); flags and --set override it.")]
    = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    task: Annotated[str | None, Opt(help="Task name (default: inferred from the data folder).")] = None,
    backbone: Annotated[str | None, Opt(help="Backbone: 'smollm2-135m' (bundled) or a local HF folder.",
                                        show_default=_d("backbone", "name_or_path"))] = None,
    encoder: Annotated[str | None, Opt(help="Encoder: 'all-minilm-l6-v2' (bundled) or a local folder.",
                                       show_default=_d("encoder", "name_or_path"))] = None,
    epochs: Annotated[int | None, Opt(min=1, help="Training epochs (LoRA methods: of the task stage).",
                                      show_default=per_kind_help("train.epochs"))] = None,
    lr: Annotated[float | None, Opt(min=0, help="Peak learning rate (LoRA methods: of the task stage).",
                                    show_default=_d("train", "lr"))] = None,
    batch_size: Annotated[int | None, Opt(min=1, help="Examples per micro-batch.",
                                          show_default=_d("train", "batch_size"))] = None,
    max_steps: Annotated[int | None, Opt(min=1, help="Stop after N optimizer steps (bounds a quick run).",
                                         show_default=_d("train", "max_steps"))] = None,
    train_limit: Annotated[int | None, Opt(min=0, help="Train on only the first N train questions.",
                                           show_default=_d("train", "limit"))] = None,
    dev_limit: Annotated[int | None, Opt(min=0, help="Select epochs on only the first N dev questions "
                                                     "(decoding weights: decode.tune_limit).",
                                         show_default=_d("train", "dev_limit"))] = None,
    seed: Annotated[int | None, Opt(help="Random seed.", show_default=_d("train", "seed"))] = None,
    persona_tokens: Annotated[int | None, Opt(min=1, help="PPlug: persona soft tokens per user.",
                                              show_default=_d("plug", "n_persona_tokens"))] = None,
    augment_copies: Annotated[int | None, Opt(min=0, help="History augmentation copies per example (0 = off; "
                                                          "each copy is another pass over the data).",
                                              show_default=_d("train", "augment_copies"))] = None,
    class_balanced: Annotated[bool | None, Opt("--class-balanced/--no-class-balanced", metavar="",
                                               help="Classification: inverse-frequency loss weights.",
                                               show_default=_d("train", "class_balanced"))] = None,
    train_input_encoder: Annotated[bool | None, Opt("--train-input-encoder/--frozen-input-encoder", metavar="",
                                                    help="PPlug: fine-tune the input encoder or freeze it.",
                                                    show_default=per_kind_help("plug.train_input_encoder"))] = None,
    k: Annotated[int | None, Opt(min=0, help="Retrieval: items in the prompt.", show_default=_d("retrieval", "k"))]
    = None,
    retriever: Annotated[str | None, Opt(help="Retrieval: bm25 | dense | recency.",
                                         show_default=_d("retrieval", "retriever"))] = None,
    users: Annotated[int | None, Opt(min=0, help="OPPU: personalize only the first N test users.",
                                     show_default=_d("lora", "users"))] = None,
    processes: Annotated[int | None, Opt(min=1, help="Data-parallel training processes (DDP, gloo on CPU); the "
                                                     "global batch is batch size x grad accum x N. Under torchrun "
                                                     "or accelerate the launcher decides.",
                                         show_default=_d("train", "processes"))] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="Any config field: section.field=value (repeatable).")]
    = None,
    resume: Annotated[bool, Opt("--resume/--no-resume", metavar="", help="Continue from the run folder's last epoch "
                                                             "checkpoint (kept by an interrupted run).")] = False,
    keep_checkpoint: Annotated[bool, Opt("--keep-checkpoint/--no-keep-checkpoint", metavar="",
                                         help="Keep checkpoint/ (optimizer + resume state) after training.")]
    = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a method on the train split, keep the best dev epoch, write the run folder.

    Cost: steps = epochs x train questions x (1 + augment copies) / batch size; a step of 8 examples takes
    a few seconds on CPU with the bundled model. Bound a first run with --max-steps or --augment-copies 0.
    """
    from pplug.distributed import launched
    from pplug.runner import train_run

    apply_quiet(quiet)
    cfg = build_config(method, data, task, backbone, encoder, epochs, lr, batch_size, max_steps, train_limit,
                       dev_limit, seed, persona_tokens, augment_copies, class_balanced, train_input_encoder,
                       k, retriever, users, set_, config_path=config, device=device, dtype=dtype,
                       processes=processes)
    report = train_run(cfg, out, resume=resume, keep_checkpoint=keep_checkpoint)
    report.pop("history", None)
    if launched().main:  # under a launcher, rank 0 alone prints the report
        typer.echo(json.dumps(report, indent=1))


RunOpt = Annotated[Path, Opt(help="A run folder made by `pplug train`.")]
DataOpt = Annotated[Path, Opt(help="Data folder.")]
SplitOpt = Annotated[str, Opt(help="train | dev | test")]
LimitOpt = Annotated[int | None, Opt(min=0, help="Only the first N questions of the split.", show_default="all")]
SwapOpt = Annotated[bool, Opt("--swap-history/--no-swap-history", metavar="",
                              help="Diagnostic: give each question another user's history.")]
SetOpt = Annotated[list[str] | None, Opt("--set", help="Decoding/retrieval setting for this call: decode.field=value "
                                                       "or retrieval.field=value (e.g. decode.num_beams=4, "
                                                       "decode.classify=rank), device or a *.dtype; repeatable.")]


def predict(run: RunOpt, data: DataOpt, out: Annotated[Path, Opt(help="Prediction file (LaMP format).")],
            split: SplitOpt = "test", limit: LimitOpt = None, swap_history: SwapOpt = False, set_: SetOpt = None,
            device: DeviceOpt = None, dtype: DtypeOpt = None, quiet: QuietOpt = False) -> None:
    """Predict a split with a trained run; writes {"task", "golds": [{"id", "output"}]}."""
    from pplug.runner import predict_run

    apply_quiet(quiet)
    overrides = [*device_overrides(device, dtype), *(set_ or [])]
    _, timing, _ = predict_run(run, data, split, limit, swap_history, out=out, overrides=overrides)
    typer.echo(json.dumps({"predictions": str(out)} | timing))


def eval_(run: RunOpt, data: DataOpt, split: SplitOpt = "test", limit: LimitOpt = None,
          swap_history: SwapOpt = False, set_: SetOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
          quiet: QuietOpt = False) -> None:
    """Predict and score a split; prints a JSON object of metrics and timing. Exit 2 when the split has no golds."""
    from pplug.runner import eval_run

    apply_quiet(quiet)
    overrides = [*device_overrides(device, dtype), *(set_ or [])] or None
    typer.echo(json.dumps(eval_run(run, data, split, limit, swap_history, overrides=overrides), indent=1))


def methods() -> None:
    """List the registered methods."""
    from pplug.methods import method_names

    for name in method_names():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(predict)
    app.command(name="eval")(eval_)
    app.command()(methods)
    from pplug.cli import bench_cmd
    from pplug.cli.demo_cmd import demo

    app.command()(demo)
    bench_cmd.register(app)
    from pplug.cli.serve_cmd import register as register_serve

    register_serve(app)
